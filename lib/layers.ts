// The layer engine: a disk is a qcow2 chain
//
//     base <- layer 1 <- ... <- layer N <- top
//
// The top is the file the domain XML names; its path never changes. Sealed layers live
// in `<top>.layers/` beside it (same filesystem, so renames are atomic), each named by
// the SHA-256 of its bytes, read-only, never modified. A layer refers to its parent as
// `<parent-hash>.qcow2`, relative, so the chain works wherever a host keeps its images,
// and a layer's hash pins its whole ancestry.
//
// Every operation here is a real qemu-img call built by lib/qemu-img.ts and run by an
// injected runner. Operations that change files are sequences of named steps; a kill
// at any step leaves files from which the next call recovers without losing a byte.
import { chmod, link, readdir, rm, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { DiskStateError, IntegrityError } from './errors.js';
import { fsyncDir, fsyncFile, mkdirShared, pathExists, renameDurably, tempPathBeside } from './durable-fs.js';
import { LAYER_SUFFIX, hashOfLayerFileName, layerFileName } from './file-names.js';
import { sha256File, type ProgressCallback } from './hash.js';
import {
  checkCommand,
  compareCommand,
  createOverlayCommand,
  flattenCommand,
  infoChainCommand,
  infoCommand,
  mapCommand,
  mapShowsOwnData,
  parseChain,
  parseCheck,
  rebaseSafeCommand,
  rebaseUnsafeCommand,
  type ChainEntry,
  type CheckReport,
} from './qemu-img.js';
import { runCommand, type Runner } from './runner.js';

export interface EngineDeps {
  run: Runner;
  /** Told the name of each step just before it runs (logging, fault-injection tests). */
  onStep?: (step: string) => void;
  onProgress?: ProgressCallback;
}

const defaultDeps: EngineDeps = { run: runCommand };

/**
 * A sealed layer holds guest data: read-only, and readable by its owner and group only
 * (root, then libvirt's QEMU user once libvirt labels the chain at start).
 */
export const LAYER_MODE = 0o440;
/** A top: the guest's own, writable by its owner only. */
const TOP_MODE = 0o600;
/** A sealed top that is not yet published under its hash (see sealTop). */
const INCOMING = 'incoming.qcow2';
/** Prefix of a merge's temporary output. */
const MERGING_PREFIX = 'merging-';
/** Prefix of a raw image's conversion in progress (see stageRawImage). */
const CONVERTING_PREFIX = 'converting-';

/** Where a seal (or a raw disk's conversion) keeps the layer it is making. */
export function incomingPathOf(topPath: string): string {
  return join(layersDirOf(topPath), INCOMING);
}

/** The directory holding a disk's sealed layers. */
export function layersDirOf(topPath: string): string {
  return `${topPath}.layers`;
}

/** The path of a disk's layer. */
export function layerPathOf(topPath: string, hash: string): string {
  return join(layersDirOf(topPath), layerFileName(hash));
}

/** The backing reference the top writes to one of its layers (relative to the top's directory). */
export function topBackingRef(topPath: string, hash: string): string {
  return `${basename(layersDirOf(topPath))}/${layerFileName(hash)}`;
}

/**
 * Gives a disk's files the modes this version makes them with: an install of an older
 * one left layers world-readable (0444) and tops 0644. Changes only what is looser;
 * a file it cannot change is told to `onFailure`.
 */
export async function makePrivate(topPath: string, onFailure: (path: string, error: Error) => void): Promise<void> {
  const tighten = async (path: string, mode: number) => {
    const found = await stat(path).catch(() => undefined);
    if (!found?.isFile() || (found.mode & 0o777 & ~mode) === 0) return;
    // Tidying, not a reason to refuse a start (a read-only or root-squashed image directory).
    await chmod(path, found.mode & 0o777 & mode).catch((error: Error) => onFailure(path, error));
  };
  await tighten(topPath, TOP_MODE);
  const names = await readdir(layersDirOf(topPath)).catch(() => [] as string[]);
  for (const name of names) if (hashOfLayerFileName(name) !== undefined) await tighten(join(layersDirOf(topPath), name), LAYER_MODE);
}

/** Reads an image's backing chain, top first. */
export async function readChain(path: string, deps: EngineDeps = defaultDeps): Promise<ChainEntry[]> {
  const { stdout } = await deps.run(infoChainCommand(path));
  return parseChain(stdout);
}

/** Reads one image's header, without opening its backing file. */
export async function readImageInfo(path: string, deps: EngineDeps = defaultDeps): Promise<ChainEntry> {
  const { stdout } = await deps.run(infoCommand(path));
  return parseChain(stdout)[0] as ChainEntry;
}

/** The layer hashes below a top, nearest first (the top itself excluded). */
export async function readLayerHashes(topPath: string, deps: EngineDeps = defaultDeps): Promise<string[]> {
  return layerHashesOf(topPath, await readChain(topPath, deps));
}

/** The layer hashes of a top's chain as read (readChain), nearest first; throws on a file that is not a sealed layer. */
export function layerHashesOf(topPath: string, chain: readonly ChainEntry[]): string[] {
  return chain.slice(1).map((entry) => {
    const hash = hashOfLayerFileName(basename(entry.path));
    if (hash === undefined) {
      throw new DiskStateError(`${topPath}: its chain holds ${entry.path}, which is not a sealed layer`, {
        remedy: 'this disk is not managed by kvm-snapshot-sync, or its chain was changed by hand',
      });
    }
    return hash;
  });
}

/** Whether an overlay holds anything of its own (data, or zeroes written over its backing). */
export async function hasOwnData(path: string, deps: EngineDeps = defaultDeps): Promise<boolean> {
  const { stdout } = await deps.run(mapCommand(path));
  return mapShowsOwnData(stdout);
}

/**
 * Makes `topPath` a fresh, empty overlay on layer `hash`. Atomic: the new top is made
 * under a temporary name and renamed over the old one. Refuses to replace a top that
 * holds data of its own: that would lose guest writes (seal it first).
 */
export async function createTop(topPath: string, hash: string, deps: EngineDeps = defaultDeps): Promise<void> {
  const layer = layerPathOf(topPath, hash);
  if (!(await pathExists(layer))) {
    throw new DiskStateError(`cannot put a new top on ${topPath}: layer ${layer} does not exist`);
  }
  if ((await pathExists(topPath)) && (await hasOwnData(topPath, deps))) {
    throw new DiskStateError(`${topPath} holds writes that are not sealed yet; replacing it would lose them`, {
      remedy: 'seal the top first (it happens when the VM shuts down), then try again',
    });
  }
  await removeLeftovers(dirname(topPath), `.${basename(topPath)}.new-`);
  const temp = tempPathBeside(topPath, 'new');
  deps.onStep?.('create-top:overlay');
  try {
    await deps.run(createOverlayCommand(temp, topBackingRef(topPath, hash), { nocow: true }));
    await chmod(temp, TOP_MODE);
    await fsyncFile(temp);
    deps.onStep?.('create-top:rename');
    await renameDurably(temp, topPath);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

export interface SealResult {
  /** The new layer's hash. */
  hash: string;
  /** Its parent layer's hash; undefined when it is a base (no backing). */
  parent: string | undefined;
}

/**
 * Seals the top into an immutable layer named by its SHA-256, and puts a fresh empty top
 * on it. Returns undefined, touching nothing, when the top holds nothing of its own
 * (unless `evenIfEmpty`: a blank disk still needs a base).
 *
 * Steps (each safe to be killed in; the next sealTop or recoverSeal finishes the work):
 *   seal:move-aside     rename the top to <layers>/incoming.qcow2 (same inode, no copy)
 *   seal:rebase-header  its backing reference becomes the parent's bare file name
 *   seal:hash           SHA-256 of its bytes, streamed
 *   seal:publish        read-only, hard-linked under its hash
 *   seal:new-top        a fresh empty top on the new layer
 *   seal:drop-incoming  the incoming name is removed
 */
export async function sealTop(
  topPath: string,
  deps: EngineDeps = defaultDeps,
  { evenIfEmpty = false }: { evenIfEmpty?: boolean } = {},
): Promise<SealResult | undefined> {
  const recovered = await recoverSeal(topPath, deps);
  if (recovered) return recovered;
  if (!evenIfEmpty && !(await hasOwnData(topPath, deps))) return undefined;

  const layersDir = layersDirOf(topPath);
  const [top] = await readChain(topPath, deps);
  if (top?.backingPath !== undefined && dirname(resolve(top.backingPath)) !== layersDir) {
    throw new DiskStateError(`${topPath} is backed by ${top.backingPath}, which is not one of its sealed layers`, {
      remedy: 'this disk is not managed by kvm-snapshot-sync, or its chain was changed by hand',
    });
  }
  await mkdirShared(layersDir);
  deps.onStep?.('seal:move-aside');
  await renameDurably(topPath, incomingPathOf(topPath));
  return finishSeal(topPath, deps);
}

/**
 * Finishes a seal that was interrupted (see sealTop), or does nothing when none was.
 * Returns the sealed layer when it finished one.
 */
export async function recoverSeal(topPath: string, deps: EngineDeps = defaultDeps): Promise<SealResult | undefined> {
  const incoming = incomingPathOf(topPath);
  if (!(await pathExists(incoming))) return undefined;
  if (!(await pathExists(topPath))) return finishSeal(topPath, deps);

  // Killed after the new top was made: that top must stand on the incoming layer.
  const [top, parent] = await readChain(topPath, deps);
  const incomingIno = (await stat(incoming)).ino;
  if (parent !== undefined && (await stat(parent.path)).ino === incomingIno) {
    deps.onStep?.('seal:drop-incoming');
    await unlink(incoming);
    await fsyncDir(layersDirOf(topPath));
    const hash = hashOfLayerFileName(basename(parent.path)) as string;
    const grandparent = (await readChain(parent.path, deps))[1];
    return { hash, parent: grandparent && hashOfLayerFileName(basename(grandparent.path)) };
  }
  throw new DiskStateError(
    `${topPath} and an unfinished seal (${incoming}) both exist, and the top (${top?.path}) is not on it`,
    { remedy: `keep both files; move ${incoming} away only after checking which one holds the newest data` },
  );
}

async function finishSeal(topPath: string, deps: EngineDeps): Promise<SealResult> {
  const layersDir = layersDirOf(topPath);
  const incoming = incomingPathOf(topPath);

  deps.onStep?.('seal:rebase-header');
  const sealed = await readImageInfo(incoming, deps);
  let parent: string | undefined;
  if (sealed.backingRef !== undefined) {
    const parentName = basename(sealed.backingRef);
    parent = hashOfLayerFileName(parentName);
    if (parent === undefined) throw new DiskStateError(`${incoming}: its backing ${sealed.backingRef} is not a layer`);
    // The reference was relative to the top's directory; make it relative to the layers'.
    if (sealed.backingRef !== parentName) await deps.run(rebaseUnsafeCommand(incoming, parentName));
  }

  deps.onStep?.('seal:hash');
  const hash = await publishAsLayer(incoming, layersDir, { onProgress: deps.onProgress, onStep: () => deps.onStep?.('seal:publish') });

  deps.onStep?.('seal:new-top');
  await createTop(topPath, hash, deps);

  deps.onStep?.('seal:drop-incoming');
  await unlink(incoming);
  await fsyncDir(layersDir);
  return { hash, parent };
}

/**
 * First half of taking a raw image under management: its content is converted into a
 * qcow2 file in the layers directory, compared with it, and put under the seal's
 * incoming name. The raw image is not touched. Does nothing when that was done already.
 *
 * Steps: adopt:convert (into a temporary file), adopt:compare, adopt:incoming.
 */
export async function stageRawImage(topPath: string, deps: EngineDeps = defaultDeps): Promise<void> {
  const layersDir = layersDirOf(topPath);
  const incoming = incomingPathOf(topPath);
  if (await pathExists(incoming)) return;
  await mkdirShared(layersDir);
  await removeLeftovers(layersDir, CONVERTING_PREFIX);
  const temp = tempLayerPath(layersDir, CONVERTING_PREFIX);
  try {
    deps.onStep?.('adopt:convert');
    await deps.run(flattenCommand(topPath, temp, 'raw'));
    deps.onStep?.('adopt:compare');
    await requireSameContent(topPath, temp, deps);
    await fsyncFile(temp);
    deps.onStep?.('adopt:incoming');
    await renameDurably(temp, incoming);
  } finally {
    await rm(temp, { force: true });
  }
}

/**
 * Second half: the raw image is replaced by a qcow2 top on the staged content, sealed
 * as the disk's base layer (a standalone image). The domain must already name the disk
 * as qcow2 (kss enable switches it first), so that a start at any moment either fails
 * or reads the right bytes. A kill at any step is finished by calling this again: the
 * raw image is only removed after comparing it with the staged file once more.
 *
 * Steps: adopt:drop-raw, then those of a seal from seal:rebase-header on.
 */
export async function adoptStagedRaw(topPath: string, deps: EngineDeps = defaultDeps): Promise<SealResult> {
  const incoming = incomingPathOf(topPath);
  if (await pathExists(topPath)) {
    const top = await readImageInfo(topPath, deps);
    if (top.format === 'qcow2' && top.backingRef !== undefined) {
      const sealed = await recoverSeal(topPath, deps);
      if (sealed) return sealed;
      throw new DiskStateError(`${topPath} is a qcow2 top already, and no raw image is being taken over`);
    }
    await requireSameContent(topPath, incoming, deps);
    deps.onStep?.('adopt:drop-raw');
    await unlink(topPath);
    await fsyncDir(dirname(topPath));
  }
  return finishSeal(topPath, deps);
}

async function requireSameContent(raw: string, qcow2: string, deps: EngineDeps): Promise<void> {
  const { exitCode } = await deps.run(compareCommand(raw, qcow2, ['raw', 'qcow2']));
  if (exitCode !== 0) throw new IntegrityError(`the qcow2 copy of ${raw} does not read like it; the raw image was left as it is`, { remedy: 'check the disk (free space, I/O errors in dmesg), then run kss enable again' });
}

/**
 * Merges the consecutive layers from `top` down to just above `onto` into one new
 * layer whose parent is `onto` (or a standalone base when `onto` is undefined). The
 * old layers are left as they are: published files are never rewritten. Returns the
 * new layer's hash; its guest content equals that of `top`.
 *
 * Steps: merge:copy (qemu-img rebase or convert into a temporary file), merge:publish.
 */
export async function mergeLayers(
  layersDir: string,
  top: string,
  onto: string | undefined,
  deps: EngineDeps = defaultDeps,
): Promise<string> {
  const topFile = join(layersDir, layerFileName(top));
  if (onto !== undefined) {
    const ancestors = (await readChain(topFile, deps)).slice(1).map((entry) => basename(entry.path));
    if (!ancestors.includes(layerFileName(onto))) {
      throw new DiskStateError(`cannot merge: layer ${onto} is not below ${top} in ${layersDir}`);
    }
  }
  const temp = mergingPath(layersDir);
  try {
    deps.onStep?.('merge:copy');
    if (onto === undefined) await deps.run(flattenCommand(topFile, temp));
    else await copyOnto(temp, top, onto, deps);
    return await publishAsLayer(temp, layersDir, { ...deps, onStep: () => deps.onStep?.('merge:publish') });
  } finally {
    await rm(temp, { force: true });
  }
}

/**
 * Publishes the finished image `temp` (in `layersDir`, its backing named by bare layer
 * file name) as a layer: hashed, read-only, hard-linked under its hash, durable.
 * Returns the hash; `temp` stays for the caller to remove. `onStep` is told once, after
 * the hash, before anything changes.
 */
export async function publishAsLayer(temp: string, layersDir: string, deps: Pick<EngineDeps, 'onStep' | 'onProgress'>): Promise<string> {
  const hash = await sha256File(temp, deps.onProgress);
  deps.onStep?.('publish');
  await chmod(temp, LAYER_MODE);
  await fsyncFile(temp);
  await linkIfAbsent(temp, join(layersDir, layerFileName(hash)));
  await fsyncDir(layersDir);
  return hash;
}

/** A temporary file in a layers directory for a merge (removeMergeLeftovers knows it). */
function mergingPath(layersDir: string): string {
  return tempLayerPath(layersDir, MERGING_PREFIX);
}

/** A temporary file in a layers directory, named by what makes it (leftovers are found by the prefix). */
function tempLayerPath(layersDir: string, prefix: string): string {
  return join(layersDir, `${prefix}${Date.now()}-${process.pid}${LAYER_SUFFIX}`);
}

/**
 * Writes into `temp` (in the layers directory) an image with the guest content of layer
 * `top` that stands directly on layer `onto`: an empty overlay on `top`, moved onto
 * `onto` by a safe rebase, which copies in exactly the clusters where the chains differ.
 */
export async function copyOnto(temp: string, top: string, onto: string, deps: EngineDeps): Promise<void> {
  await deps.run(createOverlayCommand(temp, layerFileName(top)));
  await deps.run(rebaseSafeCommand(temp, layerFileName(onto)));
}

/**
 * Shortens the chain under `layer` in this host's copy: replaces the file of `layer`
 * with an image of the same guest content that stands directly on `onto`, the layers
 * between merged into it (the same safe rebase as mergeLayers). For layers the NAS
 * already holds, which keeps their canonical bytes: the local file no longer hashes to
 * its name. Layers above keep naming it, and read the same. The old file stays until
 * the new one replaces it by an atomic rename.
 *
 * Steps: compact:copy, compact:replace.
 */
export async function compactLayer(layersDir: string, layer: string, onto: string, deps: EngineDeps = defaultDeps): Promise<void> {
  const temp = mergingPath(layersDir);
  try {
    deps.onStep?.('compact:copy');
    await copyOnto(temp, layer, onto, deps);
    await chmod(temp, LAYER_MODE);
    await fsyncFile(temp);
    deps.onStep?.('compact:replace');
    await renameDurably(temp, join(layersDir, layerFileName(layer)));
  } finally {
    await rm(temp, { force: true });
  }
}

/**
 * Makes a top a standalone image again: the guest content of its whole chain is copied
 * into a new file beside it, compared with the chain, and renamed over the top. The
 * layers are left where they are. Steps: flatten:copy, flatten:replace.
 */
export async function flattenTop(topPath: string, deps: EngineDeps = defaultDeps): Promise<void> {
  const temp = tempPathBeside(topPath, 'flat');
  try {
    deps.onStep?.('flatten:copy');
    await deps.run(flattenCommand(topPath, temp));
    const { exitCode } = await deps.run(compareCommand(topPath, temp));
    if (exitCode !== 0) throw new IntegrityError(`the standalone copy of ${topPath} does not read like its chain; nothing was changed`, { remedy: 'check the chain with kss check' });
    await fsyncFile(temp);
    deps.onStep?.('flatten:replace');
    await renameDurably(temp, topPath);
  } finally {
    await rm(temp, { force: true });
  }
}

/** Removes what interrupted merges left behind in a layers directory (never guest data). */
export async function removeMergeLeftovers(layersDir: string): Promise<void> {
  await removeLeftovers(layersDir, MERGING_PREFIX);
}

/** Removes the files in `dir` that an interrupted operation left: those named with `prefix`, or that `match` says are. */
export async function removeLeftovers(dir: string, match: string | ((name: string) => boolean)): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const left = typeof match === 'string' ? (name: string) => name.startsWith(match) : match;
  for (const name of names.filter(left)) await rm(join(dir, name), { force: true });
}

/** Runs qemu-img check on one image. */
export async function checkImage(path: string, deps: EngineDeps = defaultDeps): Promise<CheckReport> {
  const { stdout } = await deps.run(checkCommand(path));
  return parseCheck(stdout);
}

/** Fails with an IntegrityError when a layer's bytes do not hash to its name. */
export async function verifyLayer(layersDir: string, hash: string, deps: Partial<EngineDeps> = {}): Promise<void> {
  const path = join(layersDir, layerFileName(hash));
  const actual = await sha256File(path, deps.onProgress);
  if (actual !== hash) {
    throw new IntegrityError(`layer ${path} is corrupt: its bytes hash to ${actual}`, {
      remedy: 'remove the file; it will be fetched again from the NAS',
    });
  }
}

async function linkIfAbsent(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (error) {
    // Same hash, same bytes: a layer that is already there is the one we would publish.
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
}
