// Per-domain lock that serializes the hook, the background push and the CLI on one
// host. The only importer of proper-lockfile: a lock is a directory `<path>.lock` whose
// mtime the holder refreshes; a holder killed with -9 stops refreshing, and after
// `staleMs` the lock is taken over instead of being waited on forever.
import { mkdir } from 'node:fs/promises';
import fs from 'node:fs';
import { dirname, resolve } from 'node:path';
import lockfile from 'proper-lockfile';
import { getLocks } from 'proper-lockfile/lib/lockfile.js';
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

/** A lock this process holds. */
export interface HeldLock {
  /**
   * Throws a LockedError once the lock was lost while held (its directory removed, or
   * not refreshed in time: another process may have taken it over as stale, e.g. after
   * a laptop suspend). Work under a lock calls it before each step, so that it stops
   * instead of racing the new holder.
   */
  assertHeld(): void;
}

/** Releases a lock; safe to call more than once, and after the lock was lost. */
export type Release = (() => Promise<void>) & HeldLock;

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
      onCompromised: (error: Error) => {
        lost ??= error;
        options.onCompromised?.(error);
      },
      // proper-lockfile refreshes the lock's mtime with utimes: note when that last worked.
      fs: {
        ...fs,
        utimes: (file: string, atime: Date, mtime: Date, done: (error: NodeJS.ErrnoException | null) => void) =>
          fs.utimes(file, atime, mtime, (error) => {
            if (!error) [refreshedAt, ourMtime] = [Date.now(), mtime.getTime()];
            done(error);
          }),
      },
    });
  let lost: Error | undefined;
  let refreshedAt = Date.now();
  /** The lock directory's mtime as this process last set it: another holder's is another. */
  let ourMtime: number | undefined;
  const lockDir = `${path}.lock`;
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
  refreshedAt = Date.now(); // taken now, however long it was waited for
  ourMtime = fs.statSync(lockDir, { throwIfNoEntry: false })?.mtime.getTime();
  let released = false;
  const assertHeld = () => {
    // Not refreshed for longer than staleMs (the process was suspended, or its event loop
    // stalled): another process may have taken the lock over before the refresh timer
    // could notice. It did if the directory is gone or not the one we last touched.
    if (lost === undefined && Date.now() - refreshedAt > staleMs) {
      const now = fs.statSync(lockDir, { throwIfNoEntry: false })?.mtime.getTime();
      if (now === undefined || now !== ourMtime) {
        lost = new Error(`not refreshed for ${Math.round((Date.now() - refreshedAt) / 1000)} s, and taken over`);
        forget(path);
      }
    }
    if (lost === undefined) return;
    throw new LockedError(`lost the lock ${path} while working (${lost.message}); stopped before the next step`, {
      remedy: 'run the command again: every step is safe to repeat (another process may hold the lock now: kss wait VM)',
      cause: lost,
    });
  };
  return Object.assign(
    async () => {
      if (released) return;
      released = true;
      if (lost === undefined) await release(); // a lost lock is no longer ours to remove
    },
    { assertHeld },
  );
}

/**
 * Drops a lost lock from proper-lockfile's registry (and stops refreshing it): its exit
 * handler would otherwise remove the lock directory, which is another process's now.
 */
function forget(path: string): void {
  const registry = getLocks();
  const key = resolve(path);
  const entry = registry[key];
  if (entry?.updateTimeout) clearTimeout(entry.updateTimeout);
  delete registry[key];
}

/** Runs `work` while holding the lock at `path`; the lock is released however work ends. */
export async function withLock<T>(path: string, options: LockOptions, work: (lock: HeldLock) => Promise<T>): Promise<T> {
  const release = await acquireLock(path, options);
  try {
    return await work(release);
  } finally {
    await release();
  }
}

/** Whether a live process holds the lock at `path` (a lock not refreshed for `staleMs` does not count). */
export async function isLocked(path: string, staleMs = 10_000): Promise<boolean> {
  return lockfile.check(path, { realpath: false, stale: staleMs });
}
