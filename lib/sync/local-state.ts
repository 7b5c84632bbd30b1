// This host's state of one domain, under <stateDir>/domains/<domain>/:
//
//   state.json      what this host knows: the generation it last synced with the NAS,
//                   its sealed generations not yet on the NAS, its disks, the lease, a
//                   seal under way
//   event.json      the last start or stop the hook saw (the stop work checks it)
//   lock            the per-domain lock (lib/lock.ts) of the hook, the background work
//                   after a stop, and the CLI
//   flags/<name>    one-shot flags, consumed by the next hook call that reads them
//   host.xml, definitions/   the definition: this host's own part, portable parts
//                   (lib/sync/definitions.ts)
//
// Both files are replaced atomically, so a kill at any moment leaves the old or the new
// content; the disks themselves are the final word (a seal that finished but was not
// recorded is found again: lib/sync/disks.ts sealDisks).
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pathExists, writeFileAtomic } from '../durable-fs.js';
import { DiskStateError } from '../errors.js';
import { escapeFileName } from '../file-names.js';
import type { CheckpointSession } from '../checkpoint/session.js';
import type { Generation, LayerInfo } from '../nas/format.js';

export const LOCAL_FORMAT = 1;

export interface PendingGeneration {
  generation: Generation;
  /** The layers it adds (one per changed disk). */
  layers: Record<string, LayerInfo>;
}

export interface LocalState {
  format: typeof LOCAL_FORMAT;
  domain: string;
  /** Guest device → top path, as the domain XML said at the last hook call. */
  disks: Record<string, string>;
  /** The NAS generation the disks were last in step with. */
  synced: Generation | null;
  /** Sealed here, not on the NAS yet, oldest first; each one's parent is the one before. */
  pending: PendingGeneration[];
  /** This host took the lease and has not given it back. */
  leaseHeld: boolean;
  /** How the last attempt to sync ended (for status reports). */
  lastSync?: { at: string; outcome: string };
  /**
   * Layers whose local file was compacted (lib/sync/disks.ts boundChainDepth): it now
   * stands on the layer named here, and no longer hashes to its name.
   */
  compacted?: Record<string, string>;
  /**
   * Layers whose local file was fetched from the NAS as a merged layer that reads as them
   * (lib/nas/chains.ts), with that file's hash. A host cannot check such a claim without
   * the layers it stands for, so these files are never published again from here.
   */
  fetched?: Record<string, string>;
  /**
   * The state volumes of `disks` (targets `@nvram`, `@tpm`: lib/sync/state-volumes.ts):
   * where the files they hold live on this host, and the digest of their bundle as this
   * host last captured or placed it (undefined: never; such files are not part of the
   * domain's history yet).
   */
  volumes?: Record<string, { source: string; seen?: string }>;
  /**
   * The hash of the portable definition (lib/sync/definitions.ts) that libvirt's
   * definition here was last captured as or put in place from; undefined: none yet.
   */
  definition?: string;
  /**
   * A start was refused for the definition of this generation, not yet put in place:
   * nothing ran on libvirt's definition since, so the stop work after that start takes
   * it for no change of this host's (lib/sync/definitions.ts captureDefinition).
   */
  definitionRefused?: string;
  /** The running (or last unsettled) session's checkpoints (lib/checkpoint/session.ts). */
  checkpoints?: CheckpointSession;
  /**
   * A seal of the tops under way on the generation `onto` (lib/sync/disks.ts
   * sealDisks): saved before the first disk is touched, cleared in the write that
   * records the new generation. Found at the next seal, it says that a disk whose top
   * stood on its recorded layer then, and is now empty on a new layer above it, was
   * sealed by the run that was interrupted.
   */
  sealing?: {
    onto: string | null;
    since: string;
    /** The layer each disk's top stood on when the seal began (null: none, or not known). */
    tops: Record<string, string | null>;
  };
}

/**
 * The last start (prepare) or stop (release) of the domain on this host. The work after
 * a stop runs only while its stop is still the latest event: a start that came in
 * between has done that work itself, and the VM may be running on the tops again.
 */
export interface DomainEvent {
  kind: 'start' | 'stop';
  /** Random: tells two events of the same kind apart. */
  id: string;
  at: string;
}

/**
 * One-shot flags; the CLI sets them, the hook consumes them. `stopping` is the hook's
 * own: set at release end until the background work of that stop ends (kss wait).
 */
export type Flag = 'skip-sync' | 'steal-lease' | 'no-push' | 'restoring' | 'stopping';

export function domainStateDir(stateDir: string, domain: string): string {
  return join(stateDir, 'domains', escapeFileName(domain));
}

export function domainLockPath(stateDir: string, domain: string): string {
  return join(domainStateDir(stateDir, domain), 'lock');
}

/** The generation the disks sit on: the newest pending one, else the synced one. */
export function localHead(state: LocalState): Generation | null {
  return state.pending.at(-1)?.generation ?? state.synced;
}

/** Reads the state; a domain this host has never seen has an empty one. */
export async function readLocalState(stateDir: string, domain: string): Promise<LocalState> {
  const file = join(domainStateDir(stateDir, domain), 'state.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    return { format: LOCAL_FORMAT, domain, disks: {}, synced: null, pending: [], leaseHeld: false };
  }
  const state = JSON.parse(text) as LocalState;
  if (state.format !== LOCAL_FORMAT) {
    throw new DiskStateError(`${file} has format ${String(state.format)}; this version reads ${LOCAL_FORMAT}`, {
      remedy: 'use the kvm-snapshot-sync version that wrote it',
    });
  }
  return state;
}

/** Replaces the state atomically. */
export async function writeLocalState(stateDir: string, state: LocalState): Promise<void> {
  const dir = domainStateDir(stateDir, state.domain);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dir, 'state.json'), `${JSON.stringify(state, null, 2)}\n`, 0o600);
}

function flagPath(stateDir: string, domain: string, flag: Flag): string {
  return join(domainStateDir(stateDir, domain), 'flags', flag);
}

/** Sets a one-shot flag; its content is the time, or `content`. */
export async function setFlag(stateDir: string, domain: string, flag: Flag, content = new Date().toISOString()): Promise<void> {
  const path = flagPath(stateDir, domain, flag);
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // Whole or absent after a power cut: a flag's content (a stop's id) is compared.
  await writeFileAtomic(path, `${content}\n`, 0o600);
}

/** A flag's content (without the final newline), or undefined when it is not set. */
export async function readFlag(stateDir: string, domain: string, flag: Flag): Promise<string | undefined> {
  try {
    return (await readFile(flagPath(stateDir, domain, flag), 'utf8')).replace(/\n$/u, '');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** Whether a one-shot flag is set, without consuming it. */
export async function hasFlag(stateDir: string, domain: string, flag: Flag): Promise<boolean> {
  return pathExists(flagPath(stateDir, domain, flag));
}

/** Consumes a one-shot flag: true if it was set (and now is not). */
export async function takeFlag(stateDir: string, domain: string, flag: Flag): Promise<boolean> {
  try {
    await rm(flagPath(stateDir, domain, flag));
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/** Records a start or a stop as the domain's latest event, and returns it. */
export async function recordEvent(stateDir: string, domain: string, kind: DomainEvent['kind'], now = new Date()): Promise<DomainEvent> {
  const event: DomainEvent = { kind, id: randomBytes(8).toString('hex'), at: now.toISOString() };
  const dir = domainStateDir(stateDir, domain);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dir, 'event.json'), `${JSON.stringify(event)}\n`, 0o600);
  return event;
}

/** The domain's latest event on this host, or undefined when none was recorded. */
export async function readLastEvent(stateDir: string, domain: string): Promise<DomainEvent | undefined> {
  try {
    return JSON.parse(await readFile(join(domainStateDir(stateDir, domain), 'event.json'), 'utf8')) as DomainEvent;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}
