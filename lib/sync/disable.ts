// Taking a domain out of management on this host, losing nothing: every disk becomes
// one standalone image again (its chain copied into it and compared first), a lease
// this host holds is given back, and the local state is put aside, so that `kss enable`
// can start over. The layers beside the disks and everything on the NAS stay.
import { rename } from 'node:fs/promises';
import { DiskStateError, NasUnreachableError } from '../errors.js';
import { flattenTop } from '../layers.js';
import { pathExists } from '../durable-fs.js';
import { engineDeps, underLock, type SyncDeps } from './deps.js';
import { sealDisks } from './disks.js';
import { domainStateDir, readLocalState, writeLocalState } from './local-state.js';
import { withDomainLock } from './session.js';

export interface Disabled {
  disks: string[];
  /** Generations sealed here that never reached the NAS (they are in the disks). */
  unpushed: number;
  /** Where the local state was put aside. */
  stateKept: string;
}

export async function disableDomain(domain: string, deps: SyncDeps): Promise<Disabled> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 60_000, async (lock) => {
    const engine = engineDeps(underLock(deps, lock));
    const state = await readLocalState(config.stateDir, domain);
    // First every seal is finished (an interrupted one may hold a disk's only copy of a
    // session in its layers directory, with no top), so that each disk's top reads all
    // of it and the layers directories are truly left over afterwards.
    const save = async (s: typeof state) => {
      lock.assertHeld();
      await writeLocalState(config.stateDir, s);
    };
    await sealDisks(state, config.host, (deps.now ?? (() => new Date()))(), { deps: engine, save });
    for (const [target, top] of Object.entries(state.disks)) {
      if (!(await pathExists(top))) {
        throw new DiskStateError(`disk ${target} (${top}) does not exist; nothing was changed`, {
          remedy: `put the disk file back (kss chain shows what its layers directory ${top}.layers holds), then disable again`,
        });
      }
    }
    const disks: string[] = [];
    for (const [target, top] of Object.entries(state.disks)) {
      engine.onStep?.('disable:flatten');
      await flattenTop(top, engine);
      disks.push(target);
    }
    if (state.leaseHeld) {
      const repository = deps.openRepository();
      try {
        await repository.setLease(domain, 'release', null);
      } catch (error) {
        if (!(error instanceof NasUnreachableError)) throw error;
        log.warn('the NAS cannot be reached: the lease this host holds stays recorded there', { problem: error.message });
      } finally {
        await repository.close();
      }
    }
    const stateDir = domainStateDir(config.stateDir, domain);
    const stateKept = `${stateDir}.disabled-${new Date().toISOString().replaceAll(/[:.]/gu, '-')}`;
    // The lock file lives in the state directory: move what is beside it, not the lock.
    await rename(`${stateDir}/state.json`, `${stateKept}.state.json`).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
    log.info('disabled', { disks: disks.join(','), unpushed: state.pending.length });
    return { disks, unpushed: state.pending.length, stateKept: `${stateKept}.state.json` };
  });
}
