// After a stop's work has pushed (lib/sync/stop.ts), in the same background process but
// outside the domain lock, so that a start never waits for it: keeps the NAS bounded.
//
//   nas-compact  When the NAS head's chain of a disk holds more than nasChainDepth files,
//                this host publishes the merged layers its own chain already has (its
//                local compaction made them: lib/sync/disks.ts boundChainDepth), each as a
//                new content-addressed file that reads as the layer it replaced here
//                (lib/nas/chains.ts). The NAS has no qemu-img; the host does the merge.
//   retention    The policy (lib/nas/retention.ts), applied by repository.collectGarbage.
//
// One upkeep at a time per domain (a lock of its own: a second one skips). Every step
// can be killed: an upload resumes, a manifest change is one compare-and-swap, and the
// next upkeep finds what is still to do from the manifest alone.
import { link, readdir, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { hashOfLayerFileName } from '../file-names.js';
import { sha256File } from '../hash.js';
import { layersDirOf, readChain } from '../layers.js';
import { LockedError } from '../errors.js';
import { withLock } from '../lock.js';
import { canonicalChain, providers } from '../nas/chains.js';
import type { Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { retentionPolicy } from '../nas/retention.js';
import { engineDeps, type SyncDeps } from './deps.js';
import { layerPathOf, logProgress } from './disks.js';
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
      for (const top of Object.values(state.disks)) await removePublishingLeftovers(layersDirOf(top));
      const repository = deps.openRepository();
      try {
        const manifest = await repository.readManifest(domain);
        const published = await publishMergedLayers(state, manifest, repository, deps);
        if (published > 0) log.info('published merged layers: the NAS chain is this host’s again', { layers: published, nasChainDepth: config.nasChainDepth });
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
      deps.onStep?.('nas-compact:hash');
      const held = join(layersDirOf(top), `${PUBLISHING_PREFIX}${process.pid}-${name}.qcow2`);
      await rm(held, { force: true });
      await link(entry.path, held);
      try {
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

async function removePublishingLeftovers(layersDir: string): Promise<void> {
  const names = await readdir(layersDir).catch(() => [] as string[]);
  for (const name of names.filter((n) => n.startsWith(PUBLISHING_PREFIX))) await rm(join(layersDir, name), { force: true });
}
