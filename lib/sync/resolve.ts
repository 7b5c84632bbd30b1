// Resolving a conflict (this host and the NAS both moved on), and rolling back. Nothing
// is deleted: the side that loses becomes a branch in the NAS manifest, listed by
// `kss snapshot list` and restorable by `kss rollback`, until retention removes it.
//
// The VM must not be running here (the caller checked that libvirt has it shut off; the
// domain's latest event must still be the one seen then), nor checked out by another
// host. The local side is put in place first (layers pulled, tops moved: they are empty,
// so moving them back costs nothing), and the NAS head changes last; a compare-and-swap
// that fails puts the tops back.
import { ConflictError, DiskStateError, LeaseHeldError } from '../errors.js';
import { generationId, withDefinition, type Generation, type Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { engineDeps, stateSaver, underLock, type SyncDeps } from './deps.js';
import { mergePending, pullGeneration, pushPending, rotateTops, sealDisks } from './disks.js';
import { localHead, readLocalState, type LocalState } from './local-state.js';
import { captureStateVolumes } from './state-volumes.js';
import { requireNoEventSince, withDomainLock } from './session.js';

export type Keep = 'local' | 'remote';

/** Makes one side current on this host and the NAS, keeping the other as a branch; `after` as in changeHead. */
export async function resolveConflict(domain: string, keep: Keep, deps: SyncDeps, after: string | null): Promise<{ head: string; branch: string }> {
  const now = (deps.now ?? (() => new Date()))();
  return changeHead(domain, deps, after, async ({ state, seen, repository, engine, save }) => {
    const { config, log } = deps;
    if (state.pending.length === 0 || !seen?.head || seen.head === state.synced?.id) {
      throw new DiskStateError(`${domain} has no conflict to resolve: ${state.pending.length === 0 ? 'nothing here is unsynced' : 'the NAS has not moved'}`, {
        remedy: `kss snapshot list ${domain}`,
      });
    }
    if (await mergePending(state, config.host, engine)) await save(state);
    await pushPending(state, config.stateDir, repository, log); // the local side goes to the NAS either way
    const local = state.pending[0]!;
    const branchName = `conflict-${now.toISOString().replaceAll(/[:.]/gu, '-')}`;

    if (keep === 'remote') {
      const head = seen.generations[seen.head]!;
      await pullGeneration(state, seen, head, repository, log);
      const manifest = await withTopsOn(state, head, local.generation, engine, () =>
        repository.updateManifest(domain, (m) => {
          if (m.head !== seen.head) throw movedAgain(domain);
          Object.assign(m.layers, local.layers);
          m.generations[local.generation.id] = local.generation;
          m.branches[branchName] = { head: local.generation.id, host: config.host, created: now.toISOString(), reason: `kept the NAS side; this is what ${config.host} had` };
          return m;
        }),
      );
      state.synced = manifest.generations[manifest.head as string]!;
    } else {
      // The local generation itself becomes the head: a kill after the swap leaves the
      // NAS naming it, which the next start recognises as pushed (adoptPublished).
      await repository.updateManifest(domain, (m) => {
        if (m.head !== seen.head) throw movedAgain(domain);
        const lost = m.generations[m.head as string]!;
        m.branches[branchName] = { head: lost.id, host: lost.host, created: now.toISOString(), reason: `kept ${config.host}'s side; this is what the NAS had` };
        Object.assign(m.layers, local.layers);
        m.generations[local.generation.id] = local.generation;
        m.head = local.generation.id;
        return m;
      });
      state.synced = local.generation;
    }
    state.pending = [];
    state.lastSync = { at: now.toISOString(), outcome: `conflict resolved, kept ${keep}` };
    await save(state);
    log.info('conflict resolved', { keep, head: state.synced.id, branch: branchName });
    return { head: state.synced.id, branch: branchName };
  });
}

/**
 * Puts the disks back to a generation (a kept branch or a snapshot, by name, included)
 * as a new generation on the head, so that nothing after it is lost either. Needs
 * nothing pending here; `after` as in changeHead.
 */
export async function rollback(domain: string, target: string, deps: SyncDeps, after: string | null): Promise<Generation> {
  const now = (deps.now ?? (() => new Date()))();
  return changeHead(domain, deps, after, async ({ state, seen, repository, engine, save }) => {
    const { config, log } = deps;
    if (state.pending.length > 0) {
      throw new DiskStateError(`${domain} has changes here that are not on the NAS yet`, { remedy: `start ${domain} once with the NAS reachable (that pushes them), shut it down, then roll back` });
    }
    const named = seen?.branches[target]?.head ?? seen?.snapshots?.[target]?.generation;
    const matches = named !== undefined ? [named] : Object.keys(seen?.generations ?? {}).filter((id) => id.startsWith(target));
    if (!seen || matches.length !== 1) {
      throw new DiskStateError(matches.length > 1 ? `"${target}" names more than one generation` : `no generation, branch or snapshot "${target}" on the NAS`, {
        remedy: `kss snapshot list ${domain} --remote shows them`,
      });
    }
    const wanted = seen.generations[matches[0] as string]!;
    const made = { parent: seen.head, host: config.host, created: now.toISOString(), disks: wanted.disks, ...withDefinition(wanted.definition) };
    const generation: Generation = { id: generationId(made), ...made };
    await pullGeneration(state, seen, generation, repository, log);
    await withTopsOn(state, generation, state.synced, engine, () =>
      repository.updateManifest(domain, (m) => {
        if (m.head !== seen.head) throw movedAgain(domain);
        m.generations[generation.id] = generation;
        m.head = generation.id;
        return m;
      }),
    );
    state.synced = generation;
    state.lastSync = { at: now.toISOString(), outcome: `rolled back to ${wanted.id.slice(0, 12)}` };
    await save(state);
    log.info('rolled back', { to: wanted.id, generation: generation.id });
    return generation;
  });
}

interface HeadChange {
  state: LocalState;
  seen: Manifest | undefined;
  repository: NasRepository;
  engine: ReturnType<typeof engineDeps>;
  save: (state: LocalState) => Promise<void>;
}

/**
 * The frame of resolve and rollback, under the domain lock: refuses when the domain's
 * latest event is no longer `after` (the one seen while libvirt said the VM was off: a
 * start came in between) or another host has the VM checked out; finishes a seal that
 * was interrupted (its layers would be lost when the tops move); then runs `work`.
 */
async function changeHead<T>(domain: string, deps: SyncDeps, after: string | null, work: (change: HeadChange) => Promise<T>): Promise<T> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 30_000, async (lock) => {
    await requireNoEventSince(config.stateDir, domain, after);
    const guarded = underLock(deps, lock);
    const engine = engineDeps(guarded);
    const save = stateSaver(config.stateDir, lock);
    const state = await readLocalState(config.stateDir, domain);
    const repository = deps.openRepository();
    try {
      const seen = await repository.readManifest(domain);
      if (seen?.lease && seen.lease.host !== config.host) {
        throw new LeaseHeldError(`${domain} is in use on host ${seen.lease.host} since ${seen.lease.since}`, {
          remedy: `shut it down there first (its changes then go to the NAS), then run the command again`,
        });
      }
      // What a run that did not stop cleanly left, in the firmware's state too: the tops move next.
      await captureStateVolumes(state, engine, save, 'start');
      await sealDisks(state, config.host, (deps.now ?? (() => new Date()))(), { deps: engine, save });
      return await work({ state, seen, repository, engine, save });
    } finally {
      await repository.close();
    }
  });
}

/**
 * Puts the (empty) tops on `generation`, then runs `swap` (the NAS change); if the swap
 * fails, the tops go back onto `back`, so that the disks read what the state says.
 */
async function withTopsOn<T>(state: LocalState, generation: Generation, back: Generation | null, engine: ReturnType<typeof engineDeps>, swap: () => Promise<T>): Promise<T> {
  await rotateTops(state, generation, engine);
  try {
    return await swap();
  } catch (error) {
    const home = back ?? localHead(state);
    if (home) await rotateTops(state, home, engine).catch(() => undefined); // the next start puts them right in any case
    throw error;
  }
}

function movedAgain(domain: string): ConflictError {
  return new ConflictError(`the NAS moved on again for ${domain} while this ran; nothing was changed`, { remedy: 'look again (kss snapshot list) and run the command again' });
}
