// Removes the local layer files no chain here needs any more, so that a host's image
// disk stays bounded over a year of sessions: layers merged away (mergePending),
// absorbed by a local compaction (boundChainDepth), or of generations this host left
// behind (it pulled a newer one, rolled back). The NAS keeps its own copies.
//
// What is kept is read from the real backing chains (qemu-img info --backing-chain),
// never from the manifest: a compacted file stands on another parent than its
// manifest parent. Removing an unneeded file is the only change, one unlink at a time,
// so a power cut at any point leaves every chain whole as long as the keep set is
// right; anything unexpected on a disk keeps all of that disk's files.
import { lstat, readdir, realpath, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsyncDir, pathExists } from '../durable-fs.js';
import { hashOfLayerFileName, layerFileName } from '../file-names.js';
import { incomingPathOf, layersDirOf, readChain, type EngineDeps } from '../layers.js';
import type { Generation } from '../nas/format.js';
import type { LocalState } from './local-state.js';

export interface CollectResult {
  /** The layer files removed (paths). */
  removed: string[];
  /** What they took on disk (allocated blocks). */
  bytes: number;
  /** Disks left untouched, and why (for the caller to log). */
  skipped: Array<{ disk: string; why: string }>;
}

/**
 * Removes, on each disk of the domain, every layer file (a `<sha256>.qcow2` in its
 * layers directory) that no chain of these roots reads through: the top, the synced
 * generation's layer, every pending generation's, and every `keepAlso` generation's
 * that is here (another part wants it kept, e.g. for a catch-up layer). Nothing else
 * in the directory is touched (an unfinished seal, merge, conversion or pull).
 *
 * Call it under the domain lock, with the state as saved. A disk is left alone while a
 * seal is under way (a sealed layer may then be named by its top only, which a seal
 * moves aside), and when any root's chain cannot be read.
 */
export async function removeUnusedLayers(state: LocalState, keepAlso: Generation[], deps?: EngineDeps): Promise<CollectResult> {
  const result: CollectResult = { removed: [], bytes: 0, skipped: [] };
  for (const [target, top] of Object.entries(state.disks)) {
    const roots = await rootsOf(state, target, top, keepAlso);
    if (typeof roots === 'string') {
      result.skipped.push({ disk: target, why: roots });
      continue;
    }
    let keep: KeepSet;
    try {
      keep = await keepSetOf(roots, deps);
    } catch (error) {
      result.skipped.push({ disk: target, why: `cannot read the chain it keeps: ${(error as Error).message}` });
      continue;
    }
    await removeUnkept(layersDirOf(top), keep, result);
  }
  return result;
}

/** The files whose chains a disk keeps, or why the disk is left alone. */
async function rootsOf(state: LocalState, target: string, top: string, keepAlso: Generation[]): Promise<string[] | string> {
  if (state.sealing) return 'a seal of the tops is under way';
  if (await pathExists(incomingPathOf(top))) return `a seal is unfinished (${incomingPathOf(top)})`;
  const roots = (await pathExists(top)) ? [top] : [];
  const named = [state.synced, ...state.pending.map((p) => p.generation)].map((g) => g?.disks[target]);
  for (const hash of named) {
    if (hash === undefined) continue;
    const path = join(layersDirOf(top), layerFileName(hash));
    // The state names a layer that is not here: something is off; keep everything.
    if (!(await pathExists(path))) return `its state names layer ${hash}, which is not in ${layersDirOf(top)}`;
    roots.push(path);
  }
  for (const hash of keepAlso.map((g) => g.disks[target])) {
    const path = hash === undefined ? undefined : join(layersDirOf(top), layerFileName(hash));
    if (path !== undefined && (await pathExists(path))) roots.push(path);
  }
  return roots;
}

/** A file is kept when a chain names it (directory resolved, name as written) or shares its inode. */
interface KeepSet {
  names: Set<string>;
  inodes: Set<string>;
}

async function keepSetOf(roots: string[], deps: EngineDeps | undefined): Promise<KeepSet> {
  const keep: KeepSet = { names: new Set(), inodes: new Set() };
  for (const root of roots) {
    for (const { path } of await readChain(root, deps)) {
      keep.names.add(join(await realpath(dirname(path)), basename(path)));
      keep.inodes.add(inodeKey(await stat(path)));
    }
  }
  return keep;
}

async function removeUnkept(layersDir: string, keep: KeepSet, result: CollectResult): Promise<void> {
  const names = await readdir(layersDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [] as string[];
    throw error;
  });
  if (names.length === 0) return;
  const realDir = await realpath(layersDir);
  let removedHere = false;
  for (const name of names) {
    if (hashOfLayerFileName(name) === undefined) continue;
    const path = join(layersDir, name);
    const found = await lstat(path);
    // Only regular files are ours; a link named like a layer is left as it is.
    if (!found.isFile() || keep.names.has(join(realDir, name)) || keep.inodes.has(inodeKey(found))) continue;
    await unlink(path);
    removedHere = true;
    result.removed.push(path);
    result.bytes += found.blocks * 512;
  }
  if (removedHere) await fsyncDir(layersDir);
}

function inodeKey(found: { dev: number; ino: number }): string {
  return `${found.dev}:${found.ino}`;
}
