// What every lifecycle operation is given: the configuration, the log, the NAS, and the
// side effects tests replace (the clock, the runner, a hook told each step's name).
import type { Config } from '../config.js';
import type { Notifier } from '../desktop/notifier.js';
import type { EngineDeps } from '../layers.js';
import type { HeldLock } from '../lock.js';
import type { Logger } from '../log.js';
import type { NasRepository } from '../nas/repository.js';
import { runCommand, type Runner } from '../runner.js';
import type { ClientEnvResult } from './client-env.js';
import type { LibvirtDefinitions } from './definitions.js';
import type { ProgressFor } from './disks.js';
import { writeLocalState, type LocalState } from './local-state.js';

export interface SyncDeps {
  config: Config;
  log: Logger;
  openRepository: () => NasRepository;
  now?: () => Date;
  /** Runs the external tools (default: the real runner). */
  run?: Runner;
  /** KSS_NO_SYNC / KSS_STEAL_LEASE of a local `virsh start` (lib/sync/client-env.ts). */
  clientEnvironment?: (domain: string) => Promise<ClientEnvResult>;
  /** Told each step's name just before it runs (fault-injection tests kill or throw there). */
  onStep?: (step: string) => void;
  /** How transfers show progress (default: log lines). */
  progressFor?: ProgressFor;
  /** Told, in words, what the work waits for now (a start tells the desktop: lib/desktop/notices.ts). */
  tell?: (what: string) => void;
  /** The person at this machine's desktop (the hook's start and stop work; lib/desktop/notifier.ts). */
  notifier?: Notifier;
  /**
   * libvirt, for the work that may ask it (never the hook): the stop work captures the
   * definition with it. Absent: the definition is not captured (the local head's stands).
   */
  libvirt?: LibvirtDefinitions;
}

/** The layer engine's dependencies for a lifecycle run: the runner, our steps. */
export function engineDeps(deps: Pick<SyncDeps, 'onStep' | 'run'>): EngineDeps {
  return { run: deps.run ?? runCommand, onStep: deps.onStep };
}

/**
 * The same deps for work under the domain lock: before every step, it checks that the
 * lock is still held, so that work whose lock was lost (taken over after a suspend)
 * stops at its next step instead of racing the new holder.
 */
export function underLock<D extends Pick<SyncDeps, 'onStep'>>(deps: D, lock: HeldLock): D {
  return {
    ...deps,
    onStep: (step: string) => {
      lock.assertHeld();
      deps.onStep?.(step);
    },
  };
}

/** Saves the local state under the domain lock, only while the lock is still held (see underLock). */
export function stateSaver(stateDir: string, lock: HeldLock): (state: LocalState) => Promise<void> {
  return async (state) => {
    lock.assertHeld();
    await writeLocalState(stateDir, state);
  };
}
