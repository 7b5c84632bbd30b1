// The disk side of the lifecycle, for all disks of a domain at once: a generation is
// one layer per disk, and the disks always move together.
import { readdir, rm, stat, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pathExists } from '../durable-fs.js';
import { hashOfLayerFileName, layerFileName } from '../file-names.js';
import { DiskStateError, IntegrityError } from '../errors.js';
import { compactLayer, createTop, hasOwnData, incomingPathOf, layerHashesOf, layerPathOf, layersDirOf, mergeLayers, readChain, readLayerHashes, removeLeftovers, removeMergeLeftovers, sealTop, type EngineDeps, type SealResult } from '../layers.js';
import type { Logger } from '../log.js';
import { cheapestChain, type ChainStep } from '../nas/chains.js';
import { parseQcow2Header, readLayerHeader } from '../qcow2-header.js';
import { ancestry, generationId, withDefinition, type Generation, type LayerInfo, type Manifest } from '../nas/format.js';
import { isPullPartName, pullPartPath, type LeaseChange, type NasRepository } from '../nas/repository.js';
import type { TransferProgress } from '../nas/transport.js';
import { createProgressMeter, formatBytes, progressBarReporter, progressLogReporter } from '../progress.js';
import { settleSession } from '../checkpoint/session.js';
import { runCommand } from '../runner.js';
import { publishedPending } from './decide.js';
import { readLocalDefinition } from './definitions.js';
import { localHead, type LocalState, type PendingGeneration } from './local-state.js';
import { VOLUME_SIZE, isStateVolume } from './state-volumes.js';

export interface SealOptions {
  /** Saves the state: the intent before the first disk is touched, the generation after the last. */
  save: (state: LocalState) => Promise<void>;
  deps?: EngineDeps;
  /**
   * The domain's portable definition now (lib/sync/definitions.ts captureDefinition):
   * its hash, and whether it changed here since it was last captured or put in place; a
   * change made here is sealed even when no disk was written. Undefined: not known (the
   * hook cannot ask libvirt), the local head's stands.
   */
  definition?: { hash: string; changedHere: boolean };
}

/**
 * Seals every disk whose top holds writes into one new generation on the local head,
 * appends it to `state.pending` and saves the state; returns it, or undefined when no
 * disk was written (disks without writes keep their layer).
 *
 * A generation holds every disk, so a kill or a failure between two disks' seals must
 * not lose the disks already sealed: their tops are then empty on a new layer that no
 * state names, and taking them for "not written" would put a fresh top on the old
 * layer, dropping the session's writes from the chain. So every disk is looked at
 * first, without changing anything (a disk that cannot be part of the generation fails
 * the seal here, its writes still in its top); then the intent (`state.sealing`: on
 * which generation, and the layer each top stood on) is saved, and it is cleared in the
 * same write that records the generation. A seal that finds an intent of its own
 * generation resumes it: a disk whose top stood on its recorded layer then and is now
 * empty on a layer standing on it was sealed by the interrupted run (a disk killed
 * mid-seal is finished by sealTop). A top moved by anything else is never taken for a
 * seal.
 */
export async function sealDisks(state: LocalState, host: string, now: Date, options: SealOptions): Promise<PendingGeneration | undefined> {
  // After checkpoints, only what came since the last one is left to seal.
  await settleSession(state, options.save, options.deps ?? { run: runCommand });
  const previous = localHead(state);
  const onto = previous?.id ?? null;
  const resumed = state.sealing?.onto === onto ? state.sealing : undefined;
  const looks: TopLooked[] = [];
  for (const [target, top] of Object.entries(state.disks)) {
    const before = previous?.disks[target];
    looks.push({ target, top, before, look: await lookAtTop(target, top, before, resumed?.tops?.[target], options.deps) });
  }
  // A state volume new to the domain (lib/sync/state-volumes.ts) is sealed as its base.
  const isNewBase = ({ target, before, look }: TopLooked) => isStateVolume(target) && before === undefined && look.kind === 'not-enabled';
  const definition = options.definition?.hash ?? previous?.definition;
  // Not a definition put in place from a newer generation (a start refused for it): one changed here.
  const redefined = previous !== null && options.definition?.changedHere === true && definition !== previous.definition;
  if (!redefined && !looks.some((l) => l.look.kind === 'writes' || l.look.kind === 'sealed-unrecorded' || isNewBase(l))) {
    if (state.sealing) {
      state.sealing = undefined;
      await options.save(state);
    }
    return undefined;
  }
  // A state volume without a layer or anything to seal is left out; a disk cannot be.
  const missing = looks.filter(({ target, before, look }) => !isStateVolume(target) && (look.kind === 'not-enabled' || before === undefined));
  if (missing.length > 0) {
    // One generation holds every disk: a disk without any layer cannot be left out.
    throw new DiskStateError(`disk ${missing.map(({ target, top }) => `${target} (${top})`).join(', ')} has no sealed layer and nothing to seal`, {
      remedy: 'a disk was added to the domain: kss disable, then kss enable (its writes stay in the disks), or restore the disk file',
    });
  }
  if (!resumed) {
    // A disk with writes is sealed onto its recorded layer (anything else fails below).
    const tops = looks.map(({ target, before, look }) => [target, (look.kind === 'writes' ? before : look.layer) ?? null]);
    state.sealing = { onto, since: now.toISOString(), tops: Object.fromEntries(tops) };
    await options.save(state);
  }
  const disks: Record<string, string> = {};
  const layers: Record<string, LayerInfo> = {};
  for (const l of looks) {
    const { target, top, before, look } = l;
    const sealed = isNewBase(l)
      ? await sealTop(top, options.deps, { evenIfEmpty: true })
      : look.kind === 'writes'
        ? await sealTop(top, options.deps)
        : look.kind === 'sealed-unrecorded'
          ? { hash: look.layer, parent: before }
          : undefined;
    if (!sealed) {
      if (before !== undefined) disks[target] = before;
      continue;
    }
    if ((sealed.parent ?? undefined) !== before) {
      throw new DiskStateError(
        `disk ${target}: the sealed layer stands on ${sealed.parent ?? 'nothing'}, but this host's state says ${before ?? 'nothing'}`,
        { remedy: 'the chain was changed outside kvm-snapshot-sync; check it with `kss chain`' },
      );
    }
    disks[target] = sealed.hash;
    layers[sealed.hash] = { parent: sealed.parent ?? null, size: (await stat(layerPathOf(top, sealed.hash))).size };
  }
  state.sealing = undefined;
  return recordGeneration(state, { parent: onto, host, created: now.toISOString(), disks, ...withDefinition(definition) }, layers, options.save);
}

/**
 * The first generation of a domain (lib/sync/enable.ts): every disk, written or not,
 * sealed by `sealBase` as its base; appended to `state.pending` and saved.
 */
export async function sealFirstGeneration(
  state: LocalState,
  host: string,
  now: Date,
  sealBase: (target: string, top: string) => Promise<SealResult>,
  save: (state: LocalState) => Promise<void>,
  definition?: string,
): Promise<PendingGeneration> {
  const disks: Record<string, string> = {};
  const layers: Record<string, LayerInfo> = {};
  for (const [target, top] of Object.entries(state.disks)) {
    const { hash } = await sealBase(target, top);
    disks[target] = hash;
    layers[hash] = { parent: null, size: (await stat(layerPathOf(top, hash))).size };
  }
  return recordGeneration(state, { parent: null, host, created: now.toISOString(), disks, ...withDefinition(definition) }, layers, save);
}


async function recordGeneration(
  state: LocalState,
  made: Omit<Generation, 'id'>,
  layers: Record<string, LayerInfo>,
  save: (state: LocalState) => Promise<void>,
): Promise<PendingGeneration> {
  const sealed: PendingGeneration = { generation: { id: generationId(made), ...made }, layers };
  state.pending.push(sealed);
  await save(state);
  return sealed;
}

/** A disk as a seal finds it. */
interface TopLooked {
  target: string;
  top: string;
  before: string | undefined;
  look: TopLook;
}

/** What a disk's top holds before a seal; `layer`: the layer it stands on. */
type TopLook =
  | { kind: 'writes'; layer: string | undefined }
  | { kind: 'sealed-unrecorded'; layer: string }
  | { kind: 'clean'; layer: string | undefined }
  | { kind: 'not-enabled'; layer?: undefined };

/**
 * Looks at a disk's top without changing it: whether it holds writes (or a seal killed
 * in the middle left it in its layers directory), is an image of its own, or is empty;
 * and, resuming an intent whose record says the top stood on `before` (`intentTop`),
 * whether it is now empty on a layer sealed on `before` by the interrupted run.
 */
async function lookAtTop(target: string, top: string, before: string | undefined, intentTop: string | null | undefined, deps?: EngineDeps): Promise<TopLook> {
  if (await pathExists(incomingPathOf(top))) return { kind: 'writes', layer: undefined }; // sealTop finishes it
  if (!(await pathExists(top))) return { kind: 'clean', layer: undefined }; // nothing left to seal: it gets a fresh top
  const chain = await readChain(top, deps);
  if (chain.length === 1) {
    // An image of its own: not enabled yet, or made standalone by a kss disable that did not finish.
    if (before === undefined) return { kind: 'not-enabled' };
    throw new DiskStateError(`disk ${target} (${top}) is an image of its own, not a top on its layers: a kss disable did not finish, or the file was replaced`, {
      remedy: 'run kss disable again (it finishes, losing nothing); or put back the top that kss chain showed',
    });
  }
  const [layer, parent] = layerHashesOf(top, chain);
  if (await hasOwnData(top, deps)) return { kind: 'writes', layer };
  // A state volume's base (lib/sync/state-volumes.ts) is sealed on nothing: its intent records null.
  if (intentTop !== undefined && intentTop === (before ?? null) && layer !== before && layer !== undefined) {
    if (parent !== before) {
      throw new DiskStateError(`disk ${target}: its top stands on layer ${layer}, which is neither its recorded layer ${before} nor one sealed on it`, {
        remedy: `the chain was changed outside kvm-snapshot-sync; check it with kss chain ${top}`,
      });
    }
    return { kind: 'sealed-unrecorded', layer };
  }
  return { kind: 'clean', layer };
}

/**
 * Merges the pending generations into one on the synced generation, so that only one
 * layer per disk travels. The old layers stay where they are (the stop work's
 * removeUnusedLayers, lib/sync/local-gc.ts, removes them once the state no longer names
 * them); the tops, empty after sealing, are put on the merged layers. When checkpoints
 * are among them, only the generations are merged: their layers may be on the NAS
 * already (pushed, not yet published when the VM stopped), and a merged layer would
 * send their bytes again; the one generation names every pending layer.
 */
export async function mergePending(state: LocalState, host: string, deps?: EngineDeps): Promise<boolean> {
  if (state.pending.length < 2) return false;
  const newest = (state.pending.at(-1) as PendingGeneration).generation;
  if (state.pending.some((pending) => pending.generation.checkpoint)) {
    const made = { parent: state.synced?.id ?? null, host, created: newest.created, disks: newest.disks, ...withDefinition(newest.definition) };
    const layers = Object.assign({}, ...state.pending.map((pending) => pending.layers)) as Record<string, LayerInfo>;
    state.pending = [{ generation: { id: generationId(made), ...made }, layers }];
    return true;
  }
  const disks: Record<string, string> = {};
  const layers: Record<string, LayerInfo> = {};
  for (const [target, top] of Object.entries(state.disks)) {
    const onto = state.synced?.disks[target];
    const last = newest.disks[target];
    if (last === undefined) continue; // a state volume the domain no longer has
    const changed = new Set(state.pending.map((p) => p.generation.disks[target]).filter((layer) => layer !== onto));
    let merged = last;
    if (changed.size > 1) {
      await removeMergeLeftovers(layersDirOf(top));
      merged = await mergeLayers(layersDirOf(top), last, onto, deps);
      await createTop(top, merged, deps);
    }
    disks[target] = merged;
    if (merged !== onto) layers[merged] = { parent: onto ?? null, size: (await stat(layerPathOf(top, merged))).size };
  }
  const made = { parent: state.synced?.id ?? null, host, created: newest.created, disks, ...withDefinition(newest.definition) };
  state.pending = [{ generation: { id: generationId(made), ...made }, layers }];
  return true;
}

/**
 * Keeps each disk's local chain within `maxDepth` layers. A chain grows by a layer a
 * session; reading through it costs little up to ~16 layers and then fast more (npm
 * run bench -- chain). When it is deeper than the limit, the newest layer the NAS
 * already has absorbs the layers below it, in this host's copy only, down to where the
 * chain is half the limit deep: the next compaction is then several sessions away, and
 * nothing is transferred (the other host compacts its own copy the same way). Layers
 * not on the NAS yet are never touched. Returns the disks compacted.
 */
export async function boundChainDepth(state: LocalState, maxDepth: number, deps?: EngineDeps, places: Generation[] = []): Promise<string[]> {
  const compacted: string[] = [];
  for (const [target, top] of Object.entries(state.disks)) {
    const published = state.synced?.disks[target];
    if (published === undefined || !(await pathExists(top))) continue;
    const chain = await readLayerHashes(top, deps); // nearest first, the base last
    const preferred = places.map((place) => chain.indexOf(place.disks[target] as string)).filter((index) => index >= 0);
    const ontoIndex = compactionOnto(chain.length, chain.indexOf(published), maxDepth, preferred);
    if (ontoIndex === undefined) continue;
    const onto = chain[ontoIndex] as string;
    await removeMergeLeftovers(layersDirOf(top));
    await compactLayer(layersDirOf(top), published, onto, deps);
    state.compacted = { ...state.compacted, [published]: onto };
    if (state.fetched) delete state.fetched[published]; // this host's own file now
    compacted.push(target);
  }
  return compacted;
}

/**
 * Where a compaction stops, as an index into a chain of `length` layers (nearest first,
 * the base last) whose newest published layer is at `published`: that layer absorbs
 * the ones between it and the returned index, leaving the chain half the limit deep
 * (or as close as the unpublished layers above it allow), or stopping at the nearest of
 * the `preferred` indexes (other hosts' places) that keeps it within the limit.
 * Undefined: nothing to do.
 */
export function compactionOnto(length: number, published: number, maxDepth: number, preferred: number[] = []): number | undefined {
  if (length <= maxDepth || published < 0) return undefined;
  // Onto another host's place, when that keeps the chain within the limit: the merged
  // layer then holds only what changed since that host left, which is also what it will
  // fetch at its return, and the layers under it are kept here for it anyway.
  const depthOnto = (index: number) => published + 1 + (length - index);
  const place = preferred.filter((index) => index >= published + 2 && depthOnto(index) <= maxDepth).sort((a, b) => a - b)[0];
  if (place !== undefined) return place;
  const wanted = Math.max(2, Math.ceil(maxDepth / 2));
  // Kept: layers 0..published, then the one returned and everything below it.
  const onto = Math.min(length - 1, length - (wanted - (published + 1)));
  return onto >= published + 2 ? onto : undefined; // nothing published between: nothing to absorb
}

/** Fetches every layer the generation's disks need that this host lacks, verified. */
export async function pullGeneration(
  state: LocalState,
  manifest: Manifest,
  generation: Generation,
  repository: NasRepository,
  log: Logger,
  progressFor: ProgressFor = logProgress(log),
): Promise<void> {
  // A generation without a state volume was made where the domain had no such state (or before volumes existed).
  const lacking = Object.keys(state.disks).find((target) => !isStateVolume(target) && generation.disks[target] === undefined);
  if (lacking !== undefined) {
    throw new DiskStateError(`the NAS generation ${generation.id.slice(0, 12)} has no disk ${lacking}`, {
      remedy: 'the domain has other disks here than where that generation was made: compare the definitions (virsh dumpxml)',
    });
  }
  const missing = await missingLayers(state, manifest, generation);
  const wanted = [];
  for (const { target, top, file } of missing) {
    const size = (manifest.layers[file] as LayerInfo).size;
    // The NAS says how large a file is: a state volume's cannot be much more than its virtual size.
    if (isStateVolume(target) && size > 2 * VOLUME_SIZE) {
      throw new IntegrityError(`the NAS lists layer ${file} of state volume ${target} at ${size} bytes: no state volume is that large`, {
        remedy: 'it did not come from kvm-snapshot-sync: roll back to an earlier generation (kss snapshot list), or check the NAS',
      });
    }
    const kept = (await stat(pullPartPath(layersDirOf(top), file)).catch(() => undefined))?.size ?? 0; // a pull resumes
    wanted.push({ dir: layersDirOf(top), bytes: kept <= size ? size - kept : size });
  }
  await requireRoomFor(wanted);
  for (const { target, top, layer, file } of missing) {
    const info = manifest.layers[file] as LayerInfo;
    const merged = file === layer ? {} : { merged: file };
    log.info('pulling layer', { disk: target, layer, ...merged, bytes: info.size });
    const { result } = await repository.pullLayer(state.domain, file, info, layersDirOf(top), progressFor(`pull ${target} ${layer.slice(0, 12)}`), layer);
    // Like a compacted layer: the file reads as its name but stands on another parent.
    if (file !== layer) {
      state.compacted = { ...state.compacted, [layer]: info.parent as string };
      state.fetched = { ...state.fetched, [layer]: file };
    }
    log.info('pulled layer', { disk: target, layer, resumedFrom: result.resumedFrom });
  }
  // A pull cut short and then planned otherwise (retention dropped that file, a merged
  // layer came) left its part: it could be as large as the disk.
  for (const top of Object.values(state.disks)) await removeLeftovers(layersDirOf(top), isPullPartName);
}

/**
 * Refuses a pull (or a layer built here) that would not fit: a pull's sizes come from
 * the NAS's manifest, which anything that can write to the NAS can write, and the image
 * filesystem also holds the disks of VMs that run now. Each filesystem keeps
 * `roomReserve` of its size free.
 */
export async function requireRoomFor(wanted: Array<{ dir: string; bytes: number }>): Promise<void> {
  const byFilesystem = new Map<number, { dir: string; bytes: number }>();
  for (const wish of wanted) {
    const dir = await existingAncestor(wish.dir); // a first pull makes the layers directory
    const { bytes } = wish;
    const { dev } = await stat(dir);
    const seen = byFilesystem.get(dev) ?? { dir, bytes: 0 };
    byFilesystem.set(dev, { dir: seen.dir, bytes: seen.bytes + bytes });
  }
  for (const { dir, bytes } of byFilesystem.values()) {
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    const keep = roomReserve(fs.blocks * fs.bsize);
    if (bytes + keep > free) {
      throw new DiskStateError(`not enough space to pull: ${formatBytes(bytes)} to fetch into ${dir}, where ${formatBytes(free)} is free and ${formatBytes(keep)} stays free for the VMs`, {
        remedy: 'free space on that filesystem (kss gc, other VMs), then start again; if the NAS claims far more than the VM can hold, whatever wrote it there is not kvm-snapshot-sync',
      });
    }
  }
}

async function existingAncestor(dir: string): Promise<string> {
  for (let at = dir; ; at = dirname(at)) if ((await pathExists(at)) || at === dirname(at)) return at;
}

/** What a pull leaves free on a filesystem of `size` bytes: 2 %, at least 512 MiB. Pure. */
export function roomReserve(size: number): number {
  return Math.max(512 * 2 ** 20, Math.ceil(size * 0.02));
}

/** A file to fetch for a disk: `file` on the NAS, kept here as `layer` (lib/nas/chains.ts). */
export interface PullStep {
  target: string;
  top: string;
  layer: string;
  file: string;
}

/**
 * What this host must fetch for the generation's disks, each disk's base first: per
 * disk the cheapest files (lib/nas/chains.ts cheapestChain) down to a layer it has,
 * among those `usable` accepts (all by default). Disks it has no layer for are skipped.
 */
export async function missingLayers(state: LocalState, manifest: Manifest, generation: Generation, usable?: (file: string) => boolean): Promise<PullStep[]> {
  const missing: PullStep[] = [];
  for (const [target, top] of Object.entries(state.disks)) {
    const layer = generation.disks[target];
    if (layer === undefined) continue;
    const dir = layersDirOf(top);
    const here = new Set((await readdir(dir).catch(() => [] as string[])).map(hashOfLayerFileName));
    const planned: ChainStep[] = [];
    // A layer here counts only with everything below it: a cut in the middle of a local
    // collection may have left a layer whose parent is gone. What its own header names
    // and is missing is fetched too.
    for (let wanted: string | undefined = layer, rounds = 0; wanted !== undefined && rounds < 64; rounds += 1) {
      const { steps } = cheapestChain(manifest.layers, wanted, (name) => here.has(name), usable);
      planned.push(...steps);
      const reached: string | null = steps.length === 0 ? wanted : (manifest.layers[(steps.at(-1) as ChainStep).file]?.parent ?? null);
      wanted = reached === null ? undefined : await missingBelow(dir, reached);
    }
    for (const step of planned.reverse()) missing.push({ target, top, ...step });
  }
  return missing;
}

/**
 * The first layer missing here in the chain that the local file of `layer` names
 * through its own headers (a compacted or fetched file stands on another parent than
 * its manifest parent), or undefined when that chain is whole.
 */
async function missingBelow(dir: string, layer: string): Promise<string | undefined> {
  const seen = new Set<string>();
  for (let at: string | undefined = layer; at !== undefined && !seen.has(at); ) {
    seen.add(at);
    const path = join(dir, layerFileName(at));
    if (!(await pathExists(path))) return at;
    const backing = parseQcow2Header(await readLayerHeader(path)).backingFile;
    at = backing === undefined ? undefined : hashOfLayerFileName(backing);
  }
  return undefined;
}

/** Puts a fresh empty top on the generation's layer, on every disk. */
export async function rotateTops(state: LocalState, generation: Generation, deps?: EngineDeps): Promise<void> {
  if (state.sealing) {
    // A top that is empty on a layer an interrupted seal made holds that session's only reference.
    throw new DiskStateError(`${state.domain}: a seal of its disks was interrupted and must be finished before the disks move`, {
      remedy: `kss push ${state.domain} (or start it once) finishes it`,
    });
  }
  for (const [target, top] of Object.entries(state.disks)) {
    const layer = generation.disks[target];
    // A generation without that state (or a state volume not fetched here: a start
    // without the NAS) leaves the files here as they are.
    if (isStateVolume(target) && (layer === undefined || !(await pathExists(layerPathOf(top, layer))))) {
      await removeVolumeTop(top, deps);
      continue;
    }
    // A disk the generation lacks is one added to the domain since (not synced): left alone.
    const current = (await pathExists(top)) ? (await readLayerHashes(top, deps))[0] : undefined;
    if (current !== layer) await createTop(top, layer as string, deps);
  }
}

/**
 * Removes a state volume's top (its layers stay for the local collection): it holds
 * nothing unsealed, and the files it was captured from are still in place.
 */
async function removeVolumeTop(top: string, deps?: EngineDeps): Promise<void> {
  if (!(await pathExists(top))) return;
  if (await hasOwnData(top, deps)) throw new DiskStateError(`${top} holds state that is not sealed yet`, { remedy: 'seal it first: kss push, or start the VM once' });
  await rm(top);
}

/** A disk's layers that a pending generation brings, oldest first (more than one when it holds a session's checkpoints: mergePending). */
function pendingChain(pending: PendingGeneration, target: string): string[] {
  const chain: string[] = [];
  for (let hash = pending.generation.disks[target]; hash !== undefined && Object.hasOwn(pending.layers, hash) && !chain.includes(hash); hash = pending.layers[hash]?.parent ?? undefined) {
    chain.unshift(hash);
  }
  return chain;
}

/** Pushes every layer and definition of the pending generations (resumable, verified on the NAS). */
export async function pushPending(
  state: LocalState,
  stateDir: string,
  repository: NasRepository,
  log: Logger,
  progressFor: ProgressFor = logProgress(log),
  maxBytesPerSecond?: number,
): Promise<void> {
  for (const pending of state.pending) {
    const { definition } = pending.generation;
    if (definition !== undefined) await repository.pushDefinition(state.domain, definition, await readLocalDefinition(stateDir, state.domain, definition));
    for (const [target, top] of Object.entries(state.disks)) {
      for (const hash of pendingChain(pending, target)) {
        log.info('pushing layer', { disk: target, layer: hash, bytes: pending.layers[hash]?.size });
        const result = await repository.pushLayer(state.domain, layerPathOf(top, hash), hash, progressFor(`push ${target} ${hash.slice(0, 12)}`), maxBytesPerSecond);
        log.info('pushed layer', { disk: target, layer: hash, resumedFrom: result.resumedFrom, alreadyThere: result.alreadyThere });
      }
    }
  }
}

/**
 * Records as synced the pending generations the NAS head's history already has (a
 * publish whose recording was interrupted: lib/sync/decide.ts publishedPending), with
 * the lease as the NAS has it. Returns whether anything changed.
 */
export function adoptPublished(state: LocalState, manifest: Manifest | undefined, host: string): boolean {
  if (!manifest || state.pending.length === 0) return false;
  const headLine = new Set(ancestry(manifest.generations, manifest.head).map((generation) => generation.id));
  const count = publishedPending(state.pending.map((p) => p.generation.id), headLine);
  if (count === 0) return false;
  state.synced = (state.pending[count - 1] as PendingGeneration).generation;
  state.pending = state.pending.slice(count);
  state.leaseHeld = manifest.lease?.host === host;
  return true;
}

/** Makes the pending generation the NAS head (a compare-and-swap on the synced one). */
export async function publishPending(state: LocalState, repository: NasRepository, lease: LeaseChange): Promise<Generation> {
  const pending = state.pending.at(-1) as PendingGeneration;
  // Never marked as a checkpoint: a stop or a start publishes the VM at rest (only the checkpoint process marks its own).
  const { parent, created, disks, definition } = pending.generation;
  const layers = Object.assign({}, ...state.pending.map((p) => p.layers)) as Record<string, LayerInfo>;
  return repository.publishGeneration(state.domain, { parent, created, disks, ...withDefinition(definition), layers }, lease);
}

/** Makes the progress callback of one transfer, given its label ("push vda 3f2a…"). */
export type ProgressFor = (label: string) => TransferProgress;

/** Progress as log lines (the hook, background work). */
export function logProgress(log: Logger): ProgressFor {
  return (label) => meterProgress((total) => createProgressMeter(total, progressLogReporter((message) => log.info(message), label)));
}

/** Progress as a bar on a terminal (a line at the end elsewhere), for the CLI. */
export function barProgress(stream: Parameters<typeof progressBarReporter>[1]): ProgressFor {
  return (label) => meterProgress((total) => createProgressMeter(total, progressBarReporter(label, stream)));
}

/** A transfer's progress through a meter made at its first report, when its total is known. */
export function meterProgress(make: (total: number) => ReturnType<typeof createProgressMeter>): TransferProgress {
  let meter: ReturnType<typeof createProgressMeter> | undefined;
  return (done, total) => {
    meter ??= make(total);
    meter.update(done);
    if (done === total) meter.finish();
  };
}
