// Paths on a directory NAS resolved inside its root, whatever others write to the share.
//
// Checking a path with lstat and then using it by name is a race that a writer of the
// share can win: it swaps a directory for a symbolic link in between, and the next rm,
// rename or write lands in this host's own files. So a path is walked the way openat()
// would: one component at a time, each opened with O_NOFOLLOW | O_DIRECTORY through the
// descriptor of the one before (`/proc/self/fd/N/name`), and the last component is used
// through its parent's descriptor only. A directory swapped afterwards changes nothing:
// the descriptor still is the directory that was checked.
//
// A file is first opened with O_PATH (no device driver's open runs, no FIFO blocks),
// checked to be a regular file (with one link, where it is written), and only then
// reopened through its descriptor to be read or written.
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { IntegrityError } from '../errors.js';
import { shown } from './format.js';
import { notRegularError } from './transport.js';

/** Linux's O_PATH (Node does not export it). */
const O_PATH = 0o10000000;
const DIRECTORY = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
/** How deep removeAt goes: what it removes (a lock, an upload, a domain's directory) is shallow. */
const REMOVE_DEPTH = 8;
/** Whether /proc/self/fd resolves to the descriptors (checked once: without it every name would look missing). */
let procChecked = false;

/** A name in a directory held open: `path` reaches it through the directory's descriptor. */
export interface Place {
  /** The NAS path, for messages. */
  nasPath: string;
  name: string;
  /** `/proc/self/fd/N/name`: the name looked up in the held directory, never by a path from the root. */
  path: string;
  /** `/proc/self/fd/N`: the held directory itself. */
  dirPath: string;
  close(): Promise<void>;
}

/** The parts of a NAS path; throws on an absolute path or "..". */
export function pathParts(path: string): string[] {
  const parts = path.split('/').filter((part) => part !== '' && part !== '.');
  if (path.startsWith('/') || parts.includes('..') || parts.length === 0) throw new Error(`internal: bad NAS path "${path}"`);
  return parts;
}

/**
 * The directory holding the last component of `path`, walked from `root` without
 * following any link. Missing directories are made when `create`; otherwise a missing
 * one gives undefined. The caller closes the place.
 */
export async function placeOf(root: string, where: string, path: string, create: boolean): Promise<Place | undefined> {
  const parts = pathParts(path);
  const name = parts.pop() as string;
  let dir = await open(root, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    if (!procChecked) await checkProc(dir);
    for (const part of parts) {
      const next = await openDirectory(`/proc/self/fd/${dir.fd}/${part}`, where, path, create);
      if (next === undefined) {
        await dir.close();
        return undefined;
      }
      await dir.close();
      dir = next;
    }
  } catch (error) {
    await dir.close();
    throw error;
  }
  const held = dir;
  return { nasPath: path, name, path: `/proc/self/fd/${held.fd}/${name}`, dirPath: `/proc/self/fd/${held.fd}`, close: () => held.close() };
}

async function checkProc(dir: FileHandle): Promise<void> {
  const [held, seen] = await Promise.all([dir.stat(), stat(`/proc/self/fd/${dir.fd}`).catch(() => undefined)]);
  if (seen?.ino !== held.ino || seen.dev !== held.dev) {
    throw new IntegrityError('/proc/self/fd does not show this process\'s open files here; a directory NAS needs /proc (mounted as on any Linux host)', { remedy: 'mount /proc, or use an SSH NAS' });
  }
  procChecked = true;
}

/** Runs `work` on the place of `path`, closing it after; undefined (work not run) when a directory on the way is missing. */
export async function atPlace<T>(root: string, where: string, path: string, create: boolean, work: (place: Place) => Promise<T>): Promise<T | undefined> {
  const place = await placeOf(root, where, path, create);
  if (place === undefined) return undefined;
  try {
    return await work(place);
  } finally {
    await place.close();
  }
}

/** Opens the directory at a place itself (never through a link); undefined when it does not exist. */
export function openPlaceDirectory(place: Place, where: string): Promise<FileHandle | undefined> {
  return openDirectory(place.path, where, place.nasPath, false);
}

async function openDirectory(path: string, where: string, nasPath: string, create: boolean): Promise<FileHandle | undefined> {
  try {
    return await open(path, DIRECTORY);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' && create) {
      await mkdir(path).catch((made: unknown) => {
        if ((made as NodeJS.ErrnoException).code !== 'EEXIST') throw made;
      });
      return openDirectory(path, where, nasPath, false);
    }
    if (code === 'ENOENT') return undefined;
    if (code === 'ELOOP' || code === 'ENOTDIR') {
      const found = await lstat(path).catch(() => undefined);
      throw found?.isSymbolicLink() ? symlinkError(where, nasPath) : new IntegrityError(`${where}/${shown(nasPath)} is not a directory where one must be`, { remedy: 'remove it from the NAS (kvm-snapshot-sync never makes it)' });
    }
    throw error;
  }
}

export interface FileOpen {
  write?: boolean;
  /** Create it (private, 0600) when it does not exist. */
  create?: boolean;
}

/**
 * Opens the file at a place: a regular file, not a link, and when written one with a
 * single link (a hard link planted on a share on this host's own filesystem could be
 * any of its files). Throws ENOENT (as fs does) when it does not exist and is not created.
 */
export async function openPlaceFile(place: Place, where: string, how: FileOpen = {}): Promise<FileHandle> {
  let probe: FileHandle;
  try {
    probe = await open(place.path, O_PATH | constants.O_NOFOLLOW);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || !how.create) throw error;
    // O_EXCL: a name someone else makes meanwhile (a link too) is refused, not followed.
    return open(place.path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  }
  try {
    const found = await probe.stat();
    if (found.isSymbolicLink()) throw symlinkError(where, place.nasPath);
    if (!found.isFile()) throw notRegularError(where, place.nasPath);
    if (how.write && found.nlink !== 1) {
      throw new IntegrityError(`${where}/${shown(place.nasPath)} has ${found.nlink} hard links; kvm-snapshot-sync writes only files of its own on the NAS`, {
        remedy: 'nothing was written; remove it from the NAS (kvm-snapshot-sync never makes one)',
      });
    }
    return await open(`/proc/self/fd/${probe.fd}`, how.write ? constants.O_RDWR : constants.O_RDONLY);
  } finally {
    await probe.close();
  }
}

/**
 * Removes what is at a place and nothing else: a file or link by unlink, a directory by
 * emptying it through its own descriptor, level by level (fs.rm would look every child
 * up by a path again, and follow a directory swapped for a link meanwhile). Nothing
 * happens when it is not there.
 */
export async function removeAt(place: Place, where: string): Promise<void> {
  await removeEntry(Buffer.from(place.dirPath), Buffer.from(place.name), where, place.nasPath, 0);
}

/** Paths as bytes: a name on the share need not be UTF-8, and must still be removable. */
async function removeEntry(dirPath: Buffer, name: Buffer, where: string, nasPath: string, depth: number): Promise<void> {
  const path = Buffer.concat([dirPath, Buffer.from('/'), name]);
  const found = await lstat(path).catch((error: unknown) => {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  });
  if (found === undefined) return;
  if (!found.isDirectory()) return void (await unlink(path).catch(ignoreMissing));
  if (depth >= REMOVE_DEPTH) throw new IntegrityError(`${where}/${shown(nasPath)} is nested deeper than anything kvm-snapshot-sync makes; it was not removed`, { remedy: 'remove it from the NAS by hand' });
  let held: FileHandle;
  try {
    held = await open(path, DIRECTORY);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    if ((error as NodeJS.ErrnoException).code === 'ELOOP' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') throw symlinkError(where, nasPath);
    throw error;
  }
  try {
    const inside = Buffer.from(`/proc/self/fd/${held.fd}`);
    for (const child of await readdir(inside, { encoding: 'buffer' })) await removeEntry(inside, child, where, `${nasPath}/${child.toString('utf8')}`, depth + 1);
  } finally {
    await held.close();
  }
  await rmdir(path).catch(ignoreMissing);
}

function ignoreMissing(error: unknown): void {
  if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
}

export function symlinkError(where: string, path: string): IntegrityError {
  return new IntegrityError(`${where}/${shown(path)} is or passes through a symbolic link; kvm-snapshot-sync follows none on a NAS share (one could point into this host's own files)`, {
    remedy: 'nothing was read or written there; remove the link from the share (kvm-snapshot-sync never makes one)',
  });
}
