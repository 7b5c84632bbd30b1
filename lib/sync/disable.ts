// Taking a domain out of management on this host, losing nothing: every disk becomes
// one standalone image again (its chain copied into it and compared first), a lease
// this host holds is given back, and the local state is put aside, so that `kss enable`
// can start over. The layers beside the disks and everything on the NAS stay.
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { DiskStateError, NasUnreachableError } from '../errors.js';
import { flattenTop, readChain, recoverSeal } from '../layers.js';
import { pathExists } from '../durable-fs.js';
import { engineDeps, stateSaver, underLock, type SyncDeps } from './deps.js';
import { domainStateDir, readLocalState } from './local-state.js';
import { isStateVolume, placeStateVolumes } from './state-volumes.js';
import { requireNoEventSince, withDomainLock } from './session.js';

export interface Disabled {
  disks: string[];
  /** Generations sealed here that never reached the NAS (they are in the disks). */
  unpushed: number;
  /** Where the local state was put aside. */
  stateKept: string;
}

/** Takes the domain out of management here; `after`: its latest event as seen while libvirt said it was off. */
export async function disableDomain(domain: string, deps: SyncDeps, after: string | null): Promise<Disabled> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 60_000, async (lock) => {
    await requireNoEventSince(config.stateDir, domain, after);
    const engine = engineDeps(underLock(deps, lock));
    const state = await readLocalState(config.stateDir, domain);
    // A seal killed in the middle may hold a disk's only copy of a session in its layers
    // directory, with no top: finish it, so that each top reads everything (the copy
    // below takes the whole chain, including layers no state names yet) and the layers
    // directories are truly left over afterwards. Nothing else is sealed: a disk added
    // to the domain later is already an image of its own.
    for (const [target, top] of Object.entries(state.disks)) {
      await recoverSeal(top, engine);
      if (!isStateVolume(target) && !(await pathExists(top))) {
        throw new DiskStateError(`disk ${target} (${top}) does not exist; nothing was changed`, {
          remedy: `put the disk file back (kss chain shows what its layers directory ${top}.layers holds), then disable again`,
        });
      }
    }
    // The files beside the disks get the state of the generation the disks are on (a
    // resolve or rollback since the last start moved them); the volumes are put aside
    // with the state below.
    // Disable is the way out: a volume that cannot be placed is told, not a reason to stay.
    await placeStateVolumes(state, engine, stateSaver(config.stateDir, lock), log, new Date()).catch((error: Error) => {
      log.warn('could not put the firmware and TPM state of the current generation in place; the files stay as they are', { error: error.message });
    });
    const disks: string[] = [];
    for (const [target, top] of Object.entries(state.disks)) {
      if (isStateVolume(target)) continue;
      // One that is standalone already was done by an earlier disable that did not finish.
      if ((await readChain(top, engine)).length > 1) {
        engine.onStep?.('disable:flatten');
        await flattenTop(top, engine);
      }
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
    await rename(join(stateDir, 'volumes'), `${stateKept}.volumes`).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
    // An interrupted seal is a session that never reached the NAS either.
    const unpushed = state.pending.length + (state.sealing ? 1 : 0);
    log.info('disabled', { disks: disks.join(','), unpushed });
    return { disks, unpushed, stateKept: `${stateKept}.state.json` };
  });
}
