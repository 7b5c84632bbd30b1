// Resolving a conflict (this host and the NAS both moved on), and rolling back. Nothing
// is deleted: the side that loses becomes a branch in the NAS manifest, listed by
// `kss snapshot list` and restorable by `kss rollback`, until retention removes it.
// The VM must not be running: these change which generation its disks stand on.
import { ConflictError, DiskStateError } from '../errors.js';
import { generationId, type Generation, type Manifest } from '../nas/format.js';
import { mergePending, pullGeneration, pushPending, rotateTops } from './disks.js';
import { readLocalState, writeLocalState, type LocalState } from './local-state.js';
import { withDomainLock } from './session.js';
import type { SyncDeps } from './start.js';

export type Keep = 'local' | 'remote';

/** Makes one side current on this host and the NAS, keeping the other as a branch. */
export async function resolveConflict(domain: string, keep: Keep, deps: SyncDeps): Promise<{ head: string; branch: string }> {
  const { config, log } = deps;
  const now = (deps.now ?? (() => new Date()))();
  return withDomainLock(config.stateDir, domain, log, 30_000, async () => {
    const state = await readLocalState(config.stateDir, domain);
    const repository = deps.openRepository();
    try {
      const seen = await repository.readManifest(domain);
      if (state.pending.length === 0 || !seen?.head || seen.head === state.synced?.id) {
        throw new DiskStateError(`${domain} has no conflict to resolve: ${state.pending.length === 0 ? 'nothing here is unsynced' : 'the NAS has not moved'}`, {
          remedy: `kss snapshot list ${domain}`,
        });
      }
      await mergePending(state, config.host);
      await writeLocalState(config.stateDir, state);
      await pushPending(state, repository, log); // the local side goes to the NAS either way
      const local = state.pending[0]!;
      const layers = local.layers;
      const branchName = `conflict-${now.toISOString().replaceAll(/[:.]/gu, '-')}`;

      let manifest: Manifest;
      if (keep === 'remote') {
        manifest = await repository.updateManifest(domain, (m) => {
          if (m.head !== seen.head) throw movedAgain(domain);
          Object.assign(m.layers, layers);
          m.generations[local.generation.id] = local.generation;
          m.branches[branchName] = { head: local.generation.id, host: config.host, created: now.toISOString(), reason: `kept the NAS side; this is what ${config.host} had` };
          return m;
        });
        const head = manifest.generations[manifest.head as string]!;
        await pullGeneration(state, manifest, head, repository, log);
        await rotateTops(state, head);
        state.synced = head;
        state.pending = [];
      } else {
        const made = { parent: local.generation.parent, host: config.host, created: now.toISOString(), disks: local.generation.disks };
        const generation: Generation = { id: generationId(made), ...made };
        manifest = await repository.updateManifest(domain, (m) => {
          if (m.head !== seen.head) throw movedAgain(domain);
          const lost = m.generations[m.head as string]!;
          m.branches[branchName] = { head: lost.id, host: lost.host, created: now.toISOString(), reason: `kept ${config.host}'s side; this is what the NAS had` };
          Object.assign(m.layers, layers);
          m.generations[generation.id] = generation;
          m.head = generation.id;
          return m;
        });
        state.synced = generation;
        state.pending = [];
      }
      state.lastSync = { at: now.toISOString(), outcome: `conflict resolved, kept ${keep}` };
      await writeLocalState(config.stateDir, state);
      log.info('conflict resolved', { keep, head: manifest.head ?? 'none', branch: branchName });
      return { head: manifest.head as string, branch: branchName };
    } finally {
      await repository.close();
    }
  });
}

/**
 * Puts the disks back to a generation (a kept branch or a snapshot, by name, included) as a new generation on
 * the head, so that nothing after it is lost either. Needs nothing pending here.
 */
export async function rollback(domain: string, target: string, deps: SyncDeps): Promise<Generation> {
  const { config, log } = deps;
  const now = (deps.now ?? (() => new Date()))();
  return withDomainLock(config.stateDir, domain, log, 30_000, async () => {
    const state: LocalState = await readLocalState(config.stateDir, domain);
    if (state.pending.length > 0) {
      throw new DiskStateError(`${domain} has changes here that are not on the NAS yet`, { remedy: `start ${domain} once with the NAS reachable (that pushes them), shut it down, then roll back` });
    }
    const repository = deps.openRepository();
    try {
      const seen = (await repository.readManifest(domain)) ?? undefined;
      const named = seen?.branches[target]?.head ?? seen?.snapshots?.[target]?.generation;
      const matches = named !== undefined ? [named] : Object.keys(seen?.generations ?? {}).filter((id) => id.startsWith(target));
      if (!seen || matches.length !== 1) {
        throw new DiskStateError(matches.length > 1 ? `"${target}" names more than one generation` : `no generation, branch or snapshot "${target}" on the NAS`, {
          remedy: `kss snapshot list ${domain} --remote shows them`,
        });
      }
      const wanted = seen.generations[matches[0] as string]!;
      const made = { parent: seen.head, host: config.host, created: now.toISOString(), disks: wanted.disks };
      const generation: Generation = { id: generationId(made), ...made };
      const manifest = await repository.updateManifest(domain, (m) => {
        if (m.head !== seen.head) throw movedAgain(domain);
        m.generations[generation.id] = generation;
        m.head = generation.id;
        return m;
      });
      await pullGeneration(state, manifest, generation, repository, log);
      await rotateTops(state, generation);
      state.synced = generation;
      state.lastSync = { at: now.toISOString(), outcome: `rolled back to ${wanted.id.slice(0, 12)}` };
      await writeLocalState(config.stateDir, state);
      log.info('rolled back', { to: wanted.id, generation: generation.id });
      return generation;
    } finally {
      await repository.close();
    }
  });
}

function movedAgain(domain: string): ConflictError {
  return new ConflictError(`the NAS moved on again for ${domain} while this ran; nothing was changed`, { remedy: 'look again (kss snapshot list) and run the command again' });
}
