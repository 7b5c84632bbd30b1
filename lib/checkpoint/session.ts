// A session's checkpoints, as the local state records them (LocalState.checkpoints):
//
//   begin   (prepare, on the fresh tops, before QEMU opens them) a persistent dirty
//           bitmap on every disk's top, so that the first checkpoint knows every write;
//   record  (the checkpoint process, lib/checkpoint/daemon.ts) each checkpoint as a
//           pending generation marked `checkpoint`, and the bitmap that marks since;
//   settle  (before any seal of the tops: lib/sync/disks.ts sealDisks) each top moved
//           onto its newest checkpoint's layer (lib/checkpoint/remainder.ts), so that
//           the seal holds only the rest; bitmaps never travel in a layer.
import { DiskStateError } from '../errors.js';
import { layerHashesOf, layersDirOf, readChain, removeLeftovers, type EngineDeps } from '../layers.js';
import { pathExists } from '../durable-fs.js';
import { addBitmapCommand } from '../qemu-img.js';
import { localHead, type LocalState } from '../sync/local-state.js';
import { isStateVolume } from '../sync/state-volumes.js';
import { CHECKPOINT_PREFIX } from './freeze.js';
import { moveTopOntoCheckpoint, removeBitmaps } from './remainder.js';

/** The files a checkpoint freezes into, in a layers directory, until they become layers. */
export const CHECKPOINTING_PREFIX = 'checkpointing-';

/** What the local state holds of the running session's checkpoints. */
export interface CheckpointSession {
  /** Random, of this session: its checkpoints' and bitmaps' names hold it. */
  id: string;
  /** When the session's tops were made (its first bitmap's start). */
  began: string;
  /** The layer each disk's top stood on when the session began. */
  base: Record<string, string>;
  /** Checkpoints recorded so far. */
  count: number;
  /** The checkpoint (and bitmap) that marks what was written since the last recorded one. */
  marking: string;
  /** When the last recorded checkpoint froze the disks. */
  at?: string;
}

/** The name of checkpoint `n` of session `id` (0: the one prepare's bitmaps begin). Pure. */
export function checkpointName(id: string, n: number): string {
  return `${CHECKPOINT_PREFIX}${id}-${n}`;
}

/** Whether a checkpoint name is one of session `id`'s. Pure. */
export function isOfSession(name: string, id: string): boolean {
  return name.startsWith(`${CHECKPOINT_PREFIX}${id}-`);
}

/** The disks that checkpoints cover: the domain's disks, not the state volumes. */
export function checkpointedDisks(state: LocalState): Array<[string, string]> {
  return Object.entries(state.disks).filter(([target]) => !isStateVolume(target));
}

/**
 * Starts a session on fresh, empty tops: every bitmap a top holds (a failed start's, left
 * in use) is removed, and, when `enabled`, the session's first one is added. Not saved:
 * the start saves the state.
 */
export async function beginSession(state: LocalState, enabled: boolean, id: string, now: Date, deps: EngineDeps): Promise<void> {
  state.checkpoints = undefined;
  const base: Record<string, string> = {};
  for (const [target, top] of checkpointedDisks(state)) {
    if (!(await pathExists(top))) return; // nothing to mark: a disk not made yet (no checkpoints this session)
    await removeBitmaps(top, deps);
    const layer = layerHashesOf(top, await readChain(top, deps))[0];
    if (layer === undefined) return;
    base[target] = layer;
  }
  if (!enabled || Object.keys(base).length === 0) return;
  const marking = checkpointName(id, 0);
  for (const [, top] of checkpointedDisks(state)) await deps.run(addBitmapCommand(top, marking));
  state.checkpoints = { id, began: now.toISOString(), base, count: 0, marking };
}

/**
 * Moves every top onto its newest checkpoint's layer, and strips every bitmap from the
 * tops, before a seal. Each disk is checked first: its top must stand on the layer its
 * session began on and its local head must be that session's checkpoint (anything else
 * is refused, the tops untouched). Idempotent: a run cut between two disks is finished
 * by the next; the record is cleared (and saved) only once every disk is settled.
 */
export async function settleSession(state: LocalState, save: (state: LocalState) => Promise<void>, deps: EngineDeps): Promise<void> {
  const session = state.checkpoints;
  const head = localHead(state);
  const moves: Array<{ target: string; top: string; onto: string }> = [];
  for (const [target, top] of checkpointedDisks(state)) {
    if (!(await pathExists(top))) continue;
    const onto = head?.disks[target];
    const standsOn = layerHashesOf(top, await readChain(top, deps))[0];
    if (session === undefined || onto === undefined || onto === standsOn) {
      await removeBitmaps(top, deps);
      continue;
    }
    if (standsOn !== session.base[target] || !head?.checkpoint) {
      throw new DiskStateError(`disk ${target} (${top}) stands on layer ${standsOn ?? 'none'}, neither its local head's ${onto} nor the one its session with checkpoints began on`, {
        remedy: `the chain was changed outside kvm-snapshot-sync; check it with kss chain ${state.domain}`,
      });
    }
    moves.push({ target, top, onto });
  }
  for (const { top, onto } of moves) await moveTopOntoCheckpoint(top, onto, session?.marking, deps);
  // A checkpoint killed between its freeze and its seal left its files.
  for (const [, top] of checkpointedDisks(state)) await removeLeftovers(layersDirOf(top), CHECKPOINTING_PREFIX);
  if (session !== undefined) {
    state.checkpoints = undefined;
    await save(state);
  }
}
