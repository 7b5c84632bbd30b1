// After a stop's work has pushed (lib/sync/stop.ts), in the same background process but
// outside the domain lock, so that a start never waits for it: keeps the NAS bounded.
//
//   nas-compact  When the NAS head's chain of a disk holds more than nasChainDepth files,
//                this host publishes the merged layers its own chain already has (its
//                local compaction made them: lib/sync/disks.ts boundChainDepth), each as a
//                new content-addressed file that reads as the layer it replaced here
//                (lib/nas/chains.ts). The NAS has no qemu-img; the host does the merge.
//   catch-up     For another host whose last place is not the head: one layer per disk
//                with the net change since then, when that is cheaper than what it would
//                fetch otherwise (lib/nas/chains.ts cheapestChain picks it at its return).
//   retention    The policy (lib/nas/retention.ts), applied by repository.collectGarbage.
//
// One upkeep at a time per domain (a lock of its own: a second one skips). Every step
// can be killed: an upload resumes, a manifest change is one compare-and-swap, and the
// next upkeep finds what is still to do from the manifest alone.
import { link, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { hashOfLayerFileName, layerFileName } from '../file-names.js';
import { sha256File } from '../hash.js';
import { pathExists } from '../durable-fs.js';
import { copyOnto, layerPathOf, layersDirOf, readChain, removeLeftovers } from '../layers.js';
import { layerHeaderProblem, parseQcow2Header, readLayerHeader } from '../qcow2-header.js';
import { LockedError } from '../errors.js';
import { withLock } from '../lock.js';
import { canonicalChain, cheapestChain, providers } from '../nas/chains.js';
import type { Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { hostPlaces, retentionPolicy } from '../nas/retention.js';
import { engineDeps, type SyncDeps } from './deps.js';
import { logProgress, requireRoomFor } from './disks.js';
import { domainStateDir, readLocalState, type LocalState } from './local-state.js';

/** A link to a file being published, so that a local collection cannot take it away meanwhile. */
const PUBLISHING_PREFIX = 'publishing-';

/**
 * Keeps the NAS bounded for `domain`, unless `skip` says why not (the NAS was not
 * reached, or not to be touched). Never throws: it is tidying after the work that
 * mattered. Its last log line is always "NAS upkeep finished".
 */
export async function upkeepNas(domain: string, deps: SyncDeps, skip?: string): Promise<void> {
  const { config, log } = deps;
  try {
    if (skip !== undefined) return;
    await withLock(join(domainStateDir(config.stateDir, domain), 'upkeep'), { waitMs: 0 }, async () => {
      const state = await readLocalState(config.stateDir, domain);
      for (const top of Object.values(state.disks)) await removeLeftovers(layersDirOf(top), PUBLISHING_PREFIX);
      const repository = deps.openRepository();
      try {
        let manifest = await repository.readManifest(domain);
        const published = await publishMergedLayers(state, manifest, repository, deps);
        if (published > 0) {
          log.info('published merged layers: the NAS chain is this host’s again', { layers: published, nasChainDepth: config.nasChainDepth });
          manifest = await repository.readManifest(domain);
        }
        await publishCatchUps(state, manifest, repository, deps);
        await repository.collectGarbage(domain, retentionPolicy(config), { onStep: deps.onStep });
      } finally {
        await repository.close();
      }
    });
  } catch (error) {
    if (error instanceof LockedError) log.info('another upkeep of the NAS runs for this domain; leaving it to that one');
    else log.warn('keeping the NAS bounded failed; the next stop tries again', { error: (error as Error).message });
  } finally {
    log.info('NAS upkeep finished', skip === undefined ? {} : { skipped: skip });
  }
}

/**
 * Publishes, for each disk whose NAS head chain is deeper than nasChainDepth, every link
 * of this host's chain of the head layer that the NAS lacks (a file reading as that
 * layer, on the layer below it here). Only when the NAS head is this host's synced
 * generation: its chain is then the head's. Returns how many files it published.
 */
async function publishMergedLayers(state: LocalState, manifest: Manifest | undefined, repository: NasRepository, deps: SyncDeps): Promise<number> {
  const { config, log } = deps;
  const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
  if (!manifest || !head || head.id !== state.synced?.id) return 0; // another host moved on: its upkeep does this
  const engine = engineDeps(deps);
  let published = 0;
  for (const [target, top] of Object.entries(state.disks)) {
    const layer = head.disks[target];
    if (layer === undefined || canonicalChain(manifest.layers, layer).length <= config.nasChainDepth) continue;
    const chain = await readChain(layerPathOf(top, layer), engine);
    const names = chain.map((entry) => hashOfLayerFileName(basename(entry.path)));
    if (names.some((name) => name === undefined)) continue; // not a chain of sealed layers: nothing to publish from
    const byName = providers(manifest.layers);
    for (const [i, entry] of chain.entries()) {
      const name = names[i] as string;
      const below = names[i + 1] ?? null;
      if ((byName.get(name) ?? []).some((file) => (manifest.layers[file]?.parent ?? null) === below)) continue;
      // A file fetched as a merged layer is the NAS's claim, not this host's work: never sent back as its own.
      if (state.fetched?.[name] !== undefined) continue;
      deps.onStep?.('nas-compact:hash');
      const held = join(layersDirOf(top), `${PUBLISHING_PREFIX}${process.pid}-${name}.qcow2`);
      await rm(held, { force: true });
      await link(entry.path, held);
      try {
        // The file linked must be the one read: its header names `below`, as the manifest will.
        const problem = layerHeaderProblem(parseQcow2Header(await readLayerHeader(held)), below === null ? undefined : layerFileName(below));
        if (problem !== undefined) {
          log.warn('not publishing a local layer whose header changed under us', { disk: target, layer: name, problem });
          continue;
        }
        const hash = await sha256File(held);
        const { size } = await stat(held);
        log.info('publishing a merged layer', { disk: target, readsAs: name, on: below ?? 'nothing', bytes: size });
        deps.onStep?.('nas-compact:upload');
        await repository.pushLayer(state.domain, held, hash, (deps.progressFor ?? logProgress(log))(`merged ${target} ${name.slice(0, 12)}`));
        deps.onStep?.('nas-compact:publish');
        if (await repository.addMergedLayer(state.domain, hash, { parent: below, size, readsAs: name })) published += 1;
      } finally {
        await rm(held, { force: true });
      }
    }
  }
  return published;
}

/** A catch-up layer is published only when it saves at least this share of what the other host would fetch without it. */
const CATCH_UP_SAVING = 0.1;

/**
 * For each other host whose last place (manifest `hosts`) is not the head: builds
 * here, per disk, one layer with the head layer's content standing
 * on that host's layer (a safe rebase: only the clusters that differ), and publishes it
 * as a catch-up for that host when it is smaller than what the host would fetch now
 * (lib/nas/chains.ts cheapestChain). Its size is the net change since the host left,
 * however many sessions that was. This host keeps the other hosts' layers for this
 * (lib/sync/stop.ts othersPlaces).
 */
async function publishCatchUps(state: LocalState, manifest: Manifest | undefined, repository: NasRepository, deps: SyncDeps): Promise<void> {
  const { config, log } = deps;
  const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
  if (!manifest || !head || head.id !== state.synced?.id) return;
  const engine = engineDeps(deps);
  // Any place will do, on the head's line or not (retention may have dropped the
  // generations between): the layer built reads as the head whatever it stands on.
  for (const { host, generation: place } of hostPlaces(manifest, (deps.now ?? (() => new Date()))(), config.retentionBranchDays, config.host)) {
    if (place.id === head.id) continue;
    for (const [target, top] of Object.entries(state.disks)) {
      const [layer, theirs] = [head.disks[target], place.disks[target]];
      if (layer === undefined || theirs === undefined || layer === theirs) continue;
      if (!(await pathExists(layerPathOf(top, theirs))) || !(await pathExists(layerPathOf(top, layer)))) continue;
      const now = cheapestChain(manifest.layers, layer, (name) => name === theirs);
      if (now.steps.some((step) => manifest.layers[step.file]?.catchUpFor === host && step.layer === layer)) continue; // made already
      // It holds at most what the head's chain here holds: the image filesystem must keep its reserve.
      const chain = await readChain(layerPathOf(top, layer), engine);
      await requireRoomFor([{ dir: layersDirOf(top), bytes: chain.reduce((sum, entry) => sum + entry.actualSize, 0) }]);
      deps.onStep?.('catch-up:merge');
      const made = join(layersDirOf(top), `${PUBLISHING_PREFIX}${process.pid}-catch-up.qcow2`);
      await rm(made, { force: true });
      try {
        await copyOnto(made, layer, theirs, engine);
        const { size } = await stat(made);
        if (size > now.bytes * (1 - CATCH_UP_SAVING)) continue; // what it would fetch is as small already
        const hash = await sha256File(made);
        log.info('publishing a catch-up layer', { disk: target, for: host, readsAs: layer, on: theirs, bytes: size, instead: now.bytes });
        deps.onStep?.('catch-up:upload');
        await repository.pushLayer(state.domain, made, hash, (deps.progressFor ?? logProgress(log))(`catch-up ${target} ${host}`));
        deps.onStep?.('catch-up:publish');
        await repository.addMergedLayer(state.domain, hash, { parent: theirs, size, readsAs: layer, catchUpFor: host });
      } finally {
        await rm(made, { force: true });
      }
    }
  }
}

