// After a session with checkpoints: a disk's top still stands on the layer the session
// began on and holds everything the guest wrote, while the checkpoints already froze most
// of it into layers above that one (lib/checkpoint/freeze.ts). Before the top is sealed
// it is moved onto the newest checkpoint's layer, so that the seal holds, and the stop
// pushes, only what was written since.
//
//   extracted  The top's persistent dirty bitmap of that checkpoint is sound (QEMU
//              closed the image cleanly): QEMU copies the clusters it marks into a new
//              top on the checkpoint's layer (lib/checkpoint/offline-backup.ts), which
//              then replaces the old top in one rename.
//   rebased    Otherwise (QEMU died, the bitmap is gone, the copy failed): the top's header is pointed at
//              the checkpoint's layer as it is. That is exact without any bitmap: every
//              cluster a checkpoint layer holds was copied from the top, which has it
//              allocated too, so wherever the top has nothing of its own the old and the
//              new backing chains read the same. The seal then holds the whole session
//              again (more to push, nothing lost).
//
// Steps (a kill at any one leaves the old top whole, or the new one in place; a leftover
// temporary file is removed by the next run):
//   remainder:create   an empty overlay on the checkpoint's layer, beside the top
//   remainder:copy     QEMU copies the marked clusters into it
//   remainder:rename   it replaces the top (fsynced first)
import { chmod, rm } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { fsyncFile, renameDurably, tempPathBeside } from '../durable-fs.js';
import { topBackingRef, layerHashesOf, readChain, removeLeftovers, type EngineDeps } from '../layers.js';
import { createOverlayCommand, infoCommand, rebaseUnsafeCommand, removeBitmapCommand } from '../qemu-img.js';
import { runCommand } from '../runner.js';
import { copyBitmapClusters } from './offline-backup.js';

const defaultDeps: EngineDeps = { run: runCommand };

/** A top: the guest's own, writable by its owner only (as lib/layers.ts makes them). */
const TOP_MODE = 0o600;

/** A persistent dirty bitmap in an image, as qemu-img reports it. */
export interface ImageBitmap {
  name: string;
  /** Marked in use: the image was not closed cleanly since, and the bitmap cannot be trusted. */
  inUse: boolean;
}

/** The persistent bitmaps of a qcow2 image, from `qemu-img info --output=json`. Pure. */
export function parseBitmaps(json: string): ImageBitmap[] {
  const info = JSON.parse(json) as { 'format-specific'?: { data?: { bitmaps?: Array<{ name: string; flags: string[] }> } } };
  return (info['format-specific']?.data?.bitmaps ?? []).map(({ name, flags }) => ({ name, inUse: flags.includes('in-use') }));
}

export async function readBitmaps(image: string, deps: EngineDeps = defaultDeps): Promise<ImageBitmap[]> {
  return parseBitmaps((await deps.run(infoCommand(image))).stdout);
}

/** Removes every persistent bitmap of an image no process has open. */
export async function removeBitmaps(image: string, deps: EngineDeps = defaultDeps): Promise<void> {
  for (const bitmap of await readBitmaps(image, deps)) await deps.run(removeBitmapCommand(image, bitmap.name));
}

export type RemainderOutcome = { how: 'extracted'; bytes: number } | { how: 'rebased'; why: string } | { how: 'already' };

/**
 * Moves the top `topPath` onto the layer `checkpointLayer` (in its layers directory),
 * keeping its guest content, using the bitmap `bitmap` when it is sound. A top already
 * on that layer is left as it is. The layers between the top's own layer and
 * `checkpointLayer` must be checkpoints of the session this top holds (their clusters
 * copied from it), and no VM may have the top open.
 */
export async function moveTopOntoCheckpoint(topPath: string, checkpointLayer: string, bitmap: string | undefined, deps: EngineDeps = defaultDeps): Promise<RemainderOutcome> {
  await removeLeftovers(dirname(topPath), `.${basename(topPath)}.remainder-`);
  if (layerHashesOf(topPath, await readChain(topPath, deps))[0] === checkpointLayer) return { how: 'already' };
  const bitmaps = await readBitmaps(topPath, deps);
  const sound = bitmaps.find((entry) => entry.name === bitmap && !entry.inUse);
  if (sound === undefined) {
    const why = bitmap === undefined ? 'no bitmap named' : bitmaps.some((entry) => entry.name === bitmap) ? `bitmap ${bitmap} was not closed cleanly` : `bitmap ${bitmap} is missing`;
    return rebaseWhole(topPath, checkpointLayer, why, deps);
  }
  const temp = tempPathBeside(topPath, 'remainder');
  try {
    deps.onStep?.('remainder:create');
    await deps.run(createOverlayCommand(temp, topBackingRef(topPath, checkpointLayer), { nocow: true }));
    await chmod(temp, TOP_MODE);
    deps.onStep?.('remainder:copy');
    let bytes: number;
    try {
      bytes = await copyBitmapClusters({ source: topPath, bitmap: sound.name, target: temp });
    } catch (error) {
      // No qemu-storage-daemon, a full disk: the whole top still holds everything.
      await rm(temp, { force: true });
      return await rebaseWhole(topPath, checkpointLayer, `the copy failed: ${(error as Error).message}`, deps);
    }
    await fsyncFile(temp);
    deps.onStep?.('remainder:rename');
    await renameDurably(temp, topPath);
    return { how: 'extracted', bytes };
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/** The whole top pointed at the checkpoint's layer (exact: see the head of this file), its bitmaps removed. */
async function rebaseWhole(topPath: string, checkpointLayer: string, why: string, deps: EngineDeps): Promise<RemainderOutcome> {
  // A bitmap left in the top would travel in its layer: the checkpoints are over.
  await removeBitmaps(topPath, deps);
  await deps.run(rebaseUnsafeCommand(topPath, topBackingRef(topPath, checkpointLayer)));
  return { how: 'rebased', why };
}
