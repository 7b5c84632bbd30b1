// Taking a domain under management on this host: each disk's current content becomes
// the base layer of the first generation, sealed in place; the disk files the domain
// names become fresh empty qcow2 tops on them, at the same paths. A raw disk is first
// converted (and compared), and the domain switched to qcow2 before the raw file goes.
// Publishing it is the caller's next step (kss enable pushes at once).
//
// Every step can be killed: running it again finishes the work, and a domain whose
// first generation is already sealed here is not sealed again.
import { basename, dirname, resolve } from 'node:path';
import { mkdirShared, pathExists } from '../durable-fs.js';
import { hashOfLayerFileName } from '../file-names.js';
import { DiskStateError } from '../errors.js';
import { adoptStagedRaw, hasOwnData, incomingPathOf, layersDirOf, readChain, sealTop, stageRawImage, type EngineDeps, type SealResult } from '../layers.js';
import { markNoCowIfEmpty } from '../nocow.js';
import { sealFirstGeneration } from './disks.js';
import { attachStateVolumes, captureStateVolumes, type StateSource } from './state-volumes.js';
import { readLocalState, writeLocalState } from './local-state.js';
import { withDomainLock } from './session.js';
import { engineDeps, underLock, type SyncDeps } from './deps.js';

export interface DiskToEnable {
  path: string;
  format: 'qcow2' | 'raw';
}

export interface Enabled {
  generation: string;
  /** The first generation was sealed by an earlier, interrupted run. */
  resumed: boolean;
  /** Layers directories set NOCOW (btrfs). */
  nocow: string[];
}

/**
 * Seals every disk (a path alone is a qcow2 disk) and the state kept beside them
 * (`sources`: lib/sync/state-volumes.ts) into the domain's first generation.
 * `switchToQcow2` is called with the raw disks' targets once their content is staged,
 * before the raw files are replaced; it must make the domain name them as qcow2.
 */
export async function enableDisks(
  domain: string,
  disks: Record<string, string | DiskToEnable>,
  deps: Omit<SyncDeps, 'openRepository'>,
  switchToQcow2: (targets: string[]) => Promise<void> = async () => undefined,
  sources: readonly StateSource[] = [],
): Promise<Enabled> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 60_000, async (lock) => {
    const engine = engineDeps(underLock(deps, lock));
    const state = await readLocalState(config.stateDir, domain);
    if (state.synced !== null || state.pending.length > 1) {
      throw new DiskStateError(`${domain} is already managed on this host`, { remedy: `kss status ${domain}; kss snapshot list ${domain} shows its generations` });
    }
    const first = state.pending[0];
    if (first) return { generation: first.generation.id, resumed: true, nocow: [] };

    const all = Object.fromEntries(Object.entries(disks).map(([target, disk]) => [target, typeof disk === 'string' ? { path: disk, format: 'qcow2' } : disk]));
    const nocow: string[] = [];
    const bases: Record<string, SealResult> = {};
    const raw: string[] = [];
    for (const [target, { path, format }] of Object.entries(all)) {
      const layersDir = layersDirOf(path);
      await mkdirShared(layersDir);
      if (await markNoCowIfEmpty(layersDir)) nocow.push(layersDir);
      const base = await sealedBase(path, engine);
      if (base) bases[target] = base;
      // A raw disk whose conversion an interrupted run staged may be named qcow2 already.
      else if (format === 'raw' || (await pathExists(incomingPathOf(path)))) raw.push(target);
    }
    for (const target of raw) {
      log.info('converting a raw disk to qcow2', { disk: target, path: all[target]!.path });
      await stageRawImage(all[target]!.path, engine);
    }
    if (raw.length > 0) await switchToQcow2(raw);

    state.disks = Object.fromEntries(Object.entries(all).map(([target, disk]) => [target, disk.path]));
    const save = (s: typeof state) => writeLocalState(config.stateDir, s);
    attachStateVolumes(state, sources, config.stateDir);
    await captureStateVolumes(state, engine, save, 'enable');
    for (const target of Object.keys(state.volumes ?? {})) {
      const base = await sealedBase(state.disks[target] as string, engine);
      if (base) bases[target] = base;
    }
    const sealBase = async (target: string, top: string): Promise<SealResult> =>
      bases[target] ?? (raw.includes(target) ? adoptStagedRaw(top, engine) : (sealTop(top, engine, { evenIfEmpty: true }) as Promise<SealResult>));
    const sealed = await sealFirstGeneration(state, config.host, (deps.now ?? (() => new Date()))(), sealBase, save);
    log.info('enabled', { generation: sealed.generation.id, disks: Object.keys(disks).join(',') });
    return { generation: sealed.generation.id, resumed: false, nocow };
  });
}

/**
 * The base a top already stands on, when an interrupted enable sealed it but did not
 * record it: an empty top on one standalone layer of its own layers directory.
 */
async function sealedBase(top: string, deps: EngineDeps): Promise<SealResult | undefined> {
  if (!(await pathExists(top)) || (await pathExists(incomingPathOf(top)))) return undefined;
  const chain = await readChain(top, deps);
  const base = chain[1];
  const hash = base && hashOfLayerFileName(basename(base.path));
  if (chain.length !== 2 || !hash || dirname(resolve(base.path)) !== layersDirOf(top) || (await hasOwnData(top, deps))) return undefined;
  return { hash, parent: undefined };
}
