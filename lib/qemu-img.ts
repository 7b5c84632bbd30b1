// qemu-img commands as data, and parsers for what qemu-img prints. Pure: nothing here
// runs anything. Paths handed to these builders must be absolute, so that no file name
// can be read as an option (leading "-") or a protocol prefix ("nbd:…").
import { isAbsolute } from 'node:path';
import type { Command } from './runner.js';

const QEMU_IMG = 'qemu-img';

function requireAbsolute(path: string): string {
  if (!isAbsolute(path)) throw new Error(`internal: qemu-img path must be absolute, got "${path}"`);
  return path;
}

/**
 * A backing reference written into an image header. It is resolved by QEMU relative
 * to the directory of the image that holds it. Where needed, a "./" prefix stops a name with a ":"
 * before its first "/" from being taken as a protocol ("nbd:…"), and a name starting
 * with "-" from being taken as an option.
 */
export function safeBackingRef(relative: string): string {
  if (isAbsolute(relative)) throw new Error(`internal: backing reference must be relative, got "${relative}"`);
  const ambiguous = relative.startsWith('-') || /^[^/]*:/u.test(relative);
  return ambiguous ? `./${relative}` : relative;
}

/** The whole backing chain of an image, as JSON; -U so that it also works while a VM runs. */
export function infoChainCommand(path: string): Command {
  return { file: QEMU_IMG, args: ['info', '--backing-chain', '--output=json', '-U', requireAbsolute(path)] };
}

/** One image's header only: its backing file is not opened (it need not resolve). */
export function infoCommand(path: string): Command {
  return { file: QEMU_IMG, args: ['info', '--output=json', '-U', requireAbsolute(path)] };
}

/** A new standalone qcow2 image of `size` bytes. */
export function createImageCommand(path: string, size: number): Command {
  return { file: QEMU_IMG, args: ['create', '-q', '-f', 'qcow2', requireAbsolute(path), String(size)] };
}

/**
 * A new empty qcow2 overlay on `backingRef` (relative to the overlay's directory, format
 * recorded). `nocow` (for a top, the file the guest writes) turns copy-on-write off on
 * btrfs, where it fragments a VM's disk badly; QEMU ignores it on other filesystems.
 */
export function createOverlayCommand(path: string, backingRef: string, { nocow = false }: { nocow?: boolean } = {}): Command {
  return {
    file: QEMU_IMG,
    args: ['create', '-q', '-f', 'qcow2', ...(nocow ? ['-o', 'nocow=on'] : []), '-F', 'qcow2', '-b', safeBackingRef(backingRef), requireAbsolute(path)],
  };
}

/**
 * Rewrites only the backing reference in the header (no data is read or written).
 * Correct only when the new reference shows the same guest content as the old one.
 */
export function rebaseUnsafeCommand(path: string, backingRef: string): Command {
  return {
    file: QEMU_IMG,
    args: ['rebase', '-q', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', safeBackingRef(backingRef), requireAbsolute(path)],
  };
}

/**
 * Moves an image onto a new backing file, copying into it every cluster where the old
 * and the new backing chains differ, so that its guest content stays the same.
 */
export function rebaseSafeCommand(path: string, backingRef: string): Command {
  return {
    file: QEMU_IMG,
    args: ['rebase', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', safeBackingRef(backingRef), requireAbsolute(path)],
  };
}

/**
 * Adds a persistent dirty bitmap to an image no process has open: QEMU loads it with the
 * image and marks every cluster the guest writes from then on (lib/checkpoint/).
 */
export function addBitmapCommand(path: string, name: string): Command {
  return { file: QEMU_IMG, args: ['bitmap', '--add', '-f', 'qcow2', requireAbsolute(path), name] };
}

/** Removes a persistent dirty bitmap from an image no process has open. */
export function removeBitmapCommand(path: string, name: string): Command {
  return { file: QEMU_IMG, args: ['bitmap', '--remove', '-f', 'qcow2', requireAbsolute(path), name] };
}

/** Copies the guest content of a whole chain (or of a raw image) into one standalone qcow2 image. */
export function flattenCommand(source: string, target: string, sourceFormat: 'qcow2' | 'raw' = 'qcow2'): Command {
  return {
    file: QEMU_IMG,
    args: ['convert', '-q', '-f', sourceFormat, '-O', 'qcow2', requireAbsolute(source), requireAbsolute(target)],
  };
}

/** Copies the guest content of a qcow2 chain into a raw (sparse) file. */
export function readRawCommand(source: string, target: string): Command {
  return { file: QEMU_IMG, args: ['convert', '-q', '-f', 'qcow2', '-O', 'raw', requireAbsolute(source), requireAbsolute(target)] };
}

/** One write of qemu-io: the bytes of `source` (exactly `length` of them) at `offset`, or zeros when it has none. */
export interface IoWrite {
  offset: number;
  length: number;
  source?: string;
}

/**
 * Writes into a qcow2 image, as a guest would (through its chain, into the image
 * itself): used for the state volumes, which no guest opens.
 */
export function ioWriteCommand(path: string, writes: readonly IoWrite[]): Command {
  const commands = writes.flatMap(({ offset, length, source }) => ['-c', source === undefined ? `write -q -z ${offset} ${length}` : `write -q -s ${requireAbsolute(source)} ${offset} ${length}`]);
  return { file: 'qemu-io', args: ['-f', 'qcow2', ...commands, requireAbsolute(path)] };
}

/** The allocation map of an image and its chain, as JSON. */
export function mapCommand(path: string): Command {
  return { file: QEMU_IMG, args: ['map', '--output=json', '-f', 'qcow2', requireAbsolute(path)] };
}

/** A consistency check; exit 2 (corruptions) and 3 (leaks) still print a report. */
export function checkCommand(path: string): Command {
  return {
    file: QEMU_IMG,
    args: ['check', '--output=json', '-f', 'qcow2', requireAbsolute(path)],
    okExitCodes: [0, 2, 3],
  };
}

/**
 * Compares the guest content of two images (with their chains): exit 0 same, 1 different.
 * Formats are given, never probed: a raw image may begin with any bytes.
 */
export function compareCommand(a: string, b: string, formats: ['qcow2' | 'raw', 'qcow2' | 'raw'] = ['qcow2', 'qcow2']): Command {
  return { file: QEMU_IMG, args: ['compare', '-q', '-f', formats[0], '-F', formats[1], requireAbsolute(a), requireAbsolute(b)], okExitCodes: [0, 1] };
}

/** One image of a backing chain, top first. */
export interface ChainEntry {
  path: string;
  format: string;
  virtualSize: number;
  actualSize: number;
  /** The backing reference as written in the header, if any. */
  backingRef: string | undefined;
  /** That reference resolved by QEMU to a path. */
  backingPath: string | undefined;
  backingFormat: string | undefined;
}

/** Parses `qemu-img info --backing-chain --output=json`. */
export function parseChain(json: string): ChainEntry[] {
  const raw = JSON.parse(json) as unknown;
  const entries = Array.isArray(raw) ? raw : [raw];
  return entries.map((entry: Record<string, unknown>) => ({
    path: String(entry.filename),
    format: String(entry.format),
    virtualSize: Number(entry['virtual-size']),
    actualSize: Number(entry['actual-size'] ?? 0),
    backingRef: optionalString(entry['backing-filename']),
    backingPath: optionalString(entry['full-backing-filename']),
    backingFormat: optionalString(entry['backing-filename-format']),
  }));
}

/**
 * Whether the image's own layer holds anything (data, or zeroes written over its
 * backing), from `qemu-img map --output=json`: depth 0 means "allocated in the image
 * itself".
 */
export function mapShowsOwnData(json: string): boolean {
  const extents = JSON.parse(json) as Array<{ depth: number }>;
  return extents.some((extent) => extent.depth === 0);
}

export interface CheckReport {
  corruptions: number;
  leaks: number;
  checkErrors: number;
}

/** Parses `qemu-img check --output=json`. */
export function parseCheck(json: string): CheckReport {
  const raw = JSON.parse(json) as Record<string, unknown>;
  return {
    corruptions: Number(raw.corruptions ?? 0),
    leaks: Number(raw.leaks ?? 0),
    checkErrors: Number(raw['check-errors'] ?? 0),
  };
}

function optionalString(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}
