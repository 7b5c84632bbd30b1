// Setting a domain up on a host from the NAS (`kss clone` on the second machine): the
// layers of the NAS's newest generation are fetched and verified, and each disk gets a
// fresh top on them, so that the first `virsh start` here is in step with the NAS; the
// definition it is defined with is recorded as this host's (lib/sync/definitions.ts).
import { dirname } from 'node:path';
import { mkdirShared, pathExists } from '../durable-fs.js';
import { DiskStateError } from '../errors.js';
import { layersDirOf } from '../layers.js';
import type { Generation, Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { markNoCowIfEmpty } from '../nocow.js';
import { pullGeneration, rotateTops, type ProgressFor } from './disks.js';
import type { XmlElement } from '../domain-xml.js';
import { recordDefinition } from './definitions.js';
import { readLocalState, writeLocalState } from './local-state.js';
import { attachStateVolumes, isStateVolume, type StateSource } from './state-volumes.js';
import { withDomainLock } from './session.js';
import { engineDeps, type SyncDeps } from './deps.js';

/**
 * Fetches the head generation into the disks at `disks` (guest device → top path) and
 * the state volumes of `sources` (lib/sync/state-volumes.ts: their files are put in
 * place at the first start), and records it as this host's synced generation, with
 * `definition` (its portable part and this host's own) as libvirt's here. Refuses
 * to write over an existing file; a clone that was interrupted is finished by running
 * it again.
 */
export async function cloneDisks(
  domain: string,
  disks: Record<string, string>,
  manifest: Manifest,
  repository: NasRepository,
  deps: Omit<SyncDeps, 'openRepository'> & { progressFor?: ProgressFor },
  sources: readonly StateSource[] = [],
  definition?: { portable: string; host: XmlElement },
): Promise<Generation> {
  const { config, log } = deps;
  const head = manifest.head ? manifest.generations[manifest.head] : undefined;
  if (!head) throw new DiskStateError(`the NAS has no generation of ${domain}`, { remedy: `kss enable ${domain} on the host that has it` });
  return withDomainLock(config.stateDir, domain, log, 60_000, async () => {
    const state = await readLocalState(config.stateDir, domain);
    const diskTops = Object.fromEntries(Object.entries(state.disks).filter(([target]) => !isStateVolume(target)));
    const same = JSON.stringify(diskTops) === JSON.stringify(disks);
    if (same && state.pending.length === 0 && state.synced?.id === head.id) return head; // an earlier run got this far
    if (state.synced !== null || state.pending.length > 0) {
      throw new DiskStateError(`this host already has a state for ${domain}`, { remedy: `kss status ${domain}; to clone it afresh, kss disable ${domain} first` });
    }
    if (!same) {
      const taken = [];
      for (const path of Object.values(disks)) if (await pathExists(path)) taken.push(path);
      if (taken.length > 0) throw new DiskStateError(`${taken.join(', ')} exists already; nothing was overwritten`, { remedy: 'move it away, or clone into another directory: kss clone --dir DIR' });
      state.disks = disks;
    }
    attachStateVolumes(state, sources, config.stateDir);
    await writeLocalState(config.stateDir, state);
    for (const path of Object.values(disks)) {
      for (const dir of [dirname(path), layersDirOf(path)]) {
        await mkdirShared(dir);
        if (await markNoCowIfEmpty(dir)) log.info('set NOCOW (btrfs) on a new directory', { dir });
      }
    }
    await pullGeneration(state, manifest, head, repository, log, deps.progressFor);
    await rotateTops(state, head, engineDeps(deps));
    state.synced = head;
    if (definition) await recordDefinition(config.stateDir, state, definition.portable, definition.host);
    state.lastSync = { at: (deps.now ?? (() => new Date()))().toISOString(), outcome: 'cloned' };
    await writeLocalState(config.stateDir, state);
    return head;
  });
}
