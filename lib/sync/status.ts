// Where a domain stands between this host and the NAS, for `kss status` and `kss wait`.
// judgeSync is pure; domainStatus gathers what it judges.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { layersDirOf, readChain } from '../layers.js';
import { isLocked } from '../lock.js';
import { domainLogPath } from '../log.js';
import type { Lease, Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { pathExists } from '../durable-fs.js';
import { unescapeFileName } from '../file-names.js';
import type { NasView } from './decide.js';
import { measureDelta, type Delta } from './delta.js';
import { domainLockPath, hasFlag, localHead, readLocalState, type LocalState } from './local-state.js';
import { lookAtNas } from './session.js';

/**
 * synced: both sides have the same newest generation; behind: the NAS has a newer one
 * (this host has nothing it lacks); ahead: this host has generations the NAS lacks;
 * conflict: both; not-enabled: neither side has anything; offline: the NAS cannot be
 * asked.
 */
export type SyncState = 'synced' | 'behind' | 'ahead' | 'conflict' | 'not-enabled' | 'offline';

export function judgeSync(local: { synced: string | null; pending: number }, nas: NasView): SyncState {
  if (!nas.reachable) return 'offline';
  if (nas.head === null && local.synced === null) return local.pending > 0 ? 'ahead' : 'not-enabled';
  if (local.pending > 0) return nas.head === local.synced ? 'ahead' : 'conflict';
  return nas.head === local.synced ? 'synced' : 'behind';
}

export interface DomainStatus {
  domain: string;
  state: SyncState;
  /** A start, a stop's background work or a kss command is working on it now. */
  busy: boolean;
  /** Generations sealed here and not on the NAS yet. */
  pending: number;
  localHead: string | null;
  nasHead: string | null;
  lease: Lease | null;
  /** Layers under each disk's top, here. */
  layers: Record<string, number>;
  /**
   * What the domain takes: here, the disks' tops and layers directories on disk
   * (allocated blocks); on the NAS, its layers as the manifest lists them (null: the
   * NAS could not be asked).
   */
  bytes: { here: number; nas: number | null };
  /** What would move each way now (kss delta). */
  delta: Pick<Delta, 'push' | 'pull' | 'tops'>;
  /** While busy: the last progress the work logged ("push vda 3f2a…: 1.2 GiB of 2.0 GiB (60%), …"). */
  progress?: string;
  /**
   * The NAS head is a checkpoint of a VM running (or cut off) on `host`, frozen at `at`:
   * what a power cut there would have left (lib/checkpoint/).
   */
  checkpoint?: { host: string; at: string };
  /** Why the NAS could not be asked. */
  problem?: string;
  lastSync?: { at: string; outcome: string };
}

/** The domains this host keeps state for. */
export async function knownDomains(config: Config): Promise<string[]> {
  const dirs = await readdir(join(config.stateDir, 'domains')).catch(() => [] as string[]);
  const names: string[] = [];
  for (const dir of dirs) {
    const state = await readLocalState(config.stateDir, unescapeFileName(dir)).catch(() => undefined);
    if (state?.synced || state?.pending.length) names.push(state.domain);
  }
  return names.sort();
}

/** Looks at one domain here and on the NAS (an unreachable NAS is part of the answer). */
export async function domainStatus(domain: string, config: Config, repository: NasRepository): Promise<DomainStatus> {
  // A stop whose background work has not taken the lock yet counts as busy too.
  const busy = (await isLocked(domainLockPath(config.stateDir, domain))) || (await hasFlag(config.stateDir, domain, 'stopping'));
  const state = await readLocalState(config.stateDir, domain);
  const { manifest, nas } = await lookAtNas(repository, domain);
  const layers: Record<string, number> = {};
  for (const [target, top] of Object.entries(state.disks)) {
    if (await pathExists(top)) layers[target] = (await readChain(top)).length - 1;
  }
  const { push, pull, tops } = await measureDelta(state, manifest);
  const progress = busy ? lastProgress(domainLogPath(config.logDir, domain)) : undefined;
  const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
  return {
    domain,
    state: judgeSync({ synced: state.synced?.id ?? null, pending: state.pending.length }, nas),
    busy,
    pending: state.pending.length,
    localHead: localHead(state)?.id ?? null,
    nasHead: manifest?.head ?? null,
    lease: manifest?.lease ?? null,
    layers,
    bytes: { here: await bytesHere(state), nas: nas.reachable ? bytesOnNas(manifest) : null },
    delta: { push, pull, tops },
    ...(progress ? { progress } : {}),
    ...(head?.checkpoint ? { checkpoint: { host: head.host, at: head.created } } : {}),
    ...(nas.reachable ? {} : { problem: nas.problem }),
    ...(state.lastSync ? { lastSync: state.lastSync } : {}),
  };
}

/** The blocks the domain's disks take here: each top and every file in its layers directory (a pull or merge in progress too). */
async function bytesHere(state: LocalState): Promise<number> {
  let bytes = 0;
  const allocated = async (path: string) => {
    const found = await lstat(path).catch(() => undefined);
    return found?.isFile() ? found.blocks * 512 : 0;
  };
  for (const top of Object.values(state.disks)) {
    bytes += await allocated(top);
    const dir = layersDirOf(top);
    for (const name of await readdir(dir).catch(() => [] as string[])) bytes += await allocated(join(dir, name));
  }
  return bytes;
}

/** The bytes of every layer the NAS keeps for the domain (none: nothing there). */
function bytesOnNas(manifest: Manifest | undefined): number {
  return Object.values(manifest?.layers ?? {}).reduce((sum, layer) => sum + layer.size, 0);
}

/** The last transfer progress line in a domain's log (it logs one every 10 s), from its end. */
export function lastProgress(logFile: string): string | undefined {
  let text: string;
  try {
    const fd = openSync(logFile, 'r');
    try {
      const size = fstatSync(fd).size;
      const buffer = Buffer.alloc(Math.min(size, 16_384));
      readSync(fd, buffer, 0, buffer.length, size - buffer.length);
      text = buffer.toString('utf8');
    } finally {
      closeSync(fd);
    }
  } catch {
    return undefined;
  }
  const lines = text.split('\n').filter((line) => PROGRESS_LINE.test(line));
  return PROGRESS_LINE.exec(lines.at(-1) ?? '')?.[1];
}

const PROGRESS_LINE = /\b((?:push|pull) \S+ [0-9a-f]{12}: .+ of .+\(\d+%\).*)$/u;
