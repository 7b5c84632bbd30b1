// Per-domain lock that serializes the hook, the background push and the CLI on one
// host. The only importer of proper-lockfile: a lock is a directory `<path>.lock` whose
// mtime the holder refreshes; a holder killed with -9 stops refreshing, and after
// `staleMs` the lock is taken over instead of being waited on forever.
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import lockfile from 'proper-lockfile';
import { LockedError } from './errors.js';

export interface LockOptions {
  /** How long to wait for a held lock before failing. */
  waitMs: number;
  /** After how long without a refresh a lock counts as abandoned. */
  staleMs?: number;
  /** Called if the lock is lost while held (its directory removed, refresh failing). */
  onCompromised?: (error: Error) => void;
  /** Called once when the lock is held by another process and we start waiting for it. */
  onWait?: () => void;
}

/** Releases a lock; safe to call more than once. */
export type Release = () => Promise<void>;

/** Takes the lock at `path` (a file that need not exist), waiting up to `waitMs`. */
export async function acquireLock(path: string, options: LockOptions): Promise<Release> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // The holder refreshes every staleMs/3 from an event loop that never blocks for long,
  // so a lock not refreshed for 10 s belongs to a process that died (kill -9, power).
  const staleMs = options.staleMs ?? 10_000;
  const interval = 200;
  const take = (retries: number) =>
    lockfile.lock(path, {
      realpath: false,
      stale: staleMs,
      update: Math.max(1000, staleMs / 3),
      retries: { retries, factor: 1, minTimeout: interval, maxTimeout: interval },
      onCompromised: options.onCompromised ?? (() => {}),
    });
  let release: () => Promise<void>;
  try {
    try {
      release = await take(0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ELOCKED' || options.waitMs <= 0) throw error;
      options.onWait?.();
      release = await take(Math.ceil(options.waitMs / interval));
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ELOCKED') throw error;
    throw new LockedError(`${path} is locked by another kvm-snapshot-sync process`, {
      remedy: 'wait for it to finish (`kss log VM` shows what it does); a lock left by a killed process frees itself',
      cause: error,
    });
  }
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    await release();
  };
}

/** Runs `work` while holding the lock at `path`; the lock is released however work ends. */
export async function withLock<T>(path: string, options: LockOptions, work: () => Promise<T>): Promise<T> {
  const release = await acquireLock(path, options);
  try {
    return await work();
  } finally {
    await release();
  }
}

/** Whether a live process holds the lock at `path` (a lock not refreshed for `staleMs` does not count). */
export async function isLocked(path: string, staleMs = 10_000): Promise<boolean> {
  return lockfile.check(path, { realpath: false, stale: staleMs });
}
