// Taking a domain under management on this host: each disk's current content becomes
// the base layer of the first generation, sealed in place; the disk files the domain
// names become fresh empty tops on them. The first start publishes it.
import { DiskStateError } from '../errors.js';
import { sealDisks } from './disks.js';
import { readLocalState, writeLocalState } from './local-state.js';
import { withDomainLock } from './session.js';
import type { SyncDeps } from './start.js';

/** Seals every disk (qcow2, without a backing file) into the domain's first generation. */
export async function enableDisks(domain: string, disks: Record<string, string>, deps: Omit<SyncDeps, 'openRepository'>): Promise<string> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 10_000, async () => {
    const state = await readLocalState(config.stateDir, domain);
    if (state.synced !== null || state.pending.length > 0) {
      throw new DiskStateError(`${domain} is already managed on this host`, { remedy: `kss snapshot list ${domain} shows its generations` });
    }
    state.disks = disks;
    const first = await sealDisks(state, config.host, (deps.now ?? (() => new Date()))(), { evenIfEmpty: true });
    state.pending = [first!];
    await writeLocalState(config.stateDir, state);
    log.info('enabled', { generation: first!.generation.id, disks: Object.keys(disks).join(',') });
    return first!.generation.id;
  });
}
