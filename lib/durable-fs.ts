// File operations that survive a crash or kill -9 at any point: a file is either its
// old complete self or its new complete self, never half-written.
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';

/** Whether a path exists; only "no such file" means no (other errors are thrown). */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/** Flushes a file's data to disk. */
export async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Flushes a directory, so that names created, renamed or removed in it are on disk. */
export async function fsyncDir(dir: string): Promise<void> {
  await fsyncFile(dir);
}

/** Renames within one directory tree and makes the new name durable. */
export async function renameDurably(from: string, to: string): Promise<void> {
  await rename(from, to);
  await fsyncDir(dirname(to));
  if (dirname(from) !== dirname(to)) await fsyncDir(dirname(from));
}

/** A temporary name beside `path`, in the same directory (so rename() stays atomic). */
export function tempPathBeside(path: string, purpose: string): string {
  return join(dirname(path), `.${basename(path)}.${purpose}-${randomBytes(4).toString('hex')}`);
}

/** Replaces a file's content atomically: write a temp file, fsync it, rename it over. */
export async function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): Promise<void> {
  const temp = tempPathBeside(path, 'tmp');
  try {
    const handle = await open(temp, 'wx', mode);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await renameDurably(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/**
 * Creates a directory (and its missing parents) that QEMU's user must be able to
 * traverse, mode 0755 whatever the umask (the executable's is private: lib/main.ts).
 * The files in it carry their own, private modes.
 */
export async function mkdirShared(dir: string): Promise<void> {
  const first = await mkdir(dir, { recursive: true, mode: 0o755 });
  if (first === undefined) return;
  let at = first;
  await chmod(at, 0o755);
  for (const part of relative(first, dir).split('/').filter(Boolean)) {
    at = join(at, part);
    await chmod(at, 0o755);
  }
}
