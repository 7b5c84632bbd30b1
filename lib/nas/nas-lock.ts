// The lock that serializes manifest updates of one domain across hosts. It is a
// directory on the NAS (mkdir is atomic on local disks, NFS, SMB and over SSH) holding
// owner.json: host, pid, a random token, since when. The holder refreshes its mtime
// while it works; a lock whose newest activity is older than `staleMs` by the NAS's
// own clock (the hosts' clocks may disagree) belongs to a host that died, and is
// broken. Breaking renames the lock away and then checks that what was renamed is the
// lock judged stale; if a live holder's lock was taken by mistake (two breakers at
// once), it is put back. The holder re-reads its token just before it writes, so even
// that rare race cannot make two writers: the compare-and-swap on the head, done under
// this lock, is what keeps the manifest right.
import { randomBytes } from 'node:crypto';
import { LockedError } from '../errors.js';
import type { Logger } from '../log.js';
import type { NasTransport } from './transport.js';

const OWNER = 'owner.json';

export interface NasLockOwner {
  host: string;
  pid: number;
  token: string;
  since: string;
}

export interface NasLockOptions {
  host: string;
  /** How long to wait for a held lock. */
  waitMs: number;
  /** Inactivity after which a lock counts as abandoned. */
  staleMs: number;
  log?: Logger;
  now?: () => Date;
  sleep?: (ms: number) => Promise<void>;
}

export interface HeldNasLock {
  owner: NasLockOwner;
  /** Fails unless this lock is still ours on the NAS: call right before writing. */
  verify(): Promise<void>;
  release(): Promise<void>;
}

/** Takes the NAS lock at `path`, waiting up to `waitMs`, breaking a stale one. */
export async function acquireNasLock(transport: NasTransport, path: string, options: NasLockOptions): Promise<HeldNasLock> {
  const now = options.now ?? (() => new Date());
  const sleep = options.sleep ?? ((ms: number) => new Promise((resolve) => setTimeout(resolve, ms)));
  const owner: NasLockOwner = { host: options.host, pid: process.pid, token: randomBytes(8).toString('hex'), since: now().toISOString() };
  const data = Buffer.from(JSON.stringify(owner));
  const deadline = Date.now() + options.waitMs;
  let holder: NasLockOwner | undefined;
  for (let attempt = 0; ; attempt += 1) {
    const result = await transport.mkdirExclusive(path, OWNER, data);
    if (result.created) return held(transport, path, owner, options.staleMs);
    holder = parseOwner(result.ownerData);
    if (result.ageMs >= options.staleMs) {
      options.log?.warn('breaking a stale NAS lock', { lock: path, holder: holder?.host, idleSeconds: Math.round(result.ageMs / 1000) });
      await breakLock(transport, path, holder);
      continue;
    }
    if (Date.now() >= deadline) break;
    await sleep(Math.min(250 * 2 ** Math.min(attempt, 3), 2000));
  }
  const who = holder ? `host ${holder.host} (pid ${holder.pid}) since ${holder.since}` : 'another process';
  throw new LockedError(`the NAS is being updated for this domain by ${who}`, {
    remedy: `try again in a moment; if ${holder?.host ?? 'that host'} died, the lock frees itself after ${Math.round(options.staleMs / 1000)} s`,
  });
}

async function breakLock(transport: NasTransport, path: string, stale: NasLockOwner | undefined): Promise<void> {
  const aside = `${path}.broken-${randomBytes(4).toString('hex')}`;
  if (!(await transport.rename(path, aside))) return; // someone else broke it first
  const moved = parseOwner(await transport.readFile(`${aside}/${OWNER}`));
  if (moved?.token !== stale?.token) {
    // We took a lock that was just made by a live holder: give it back if we can.
    await transport.mkdirExclusive(path, OWNER, Buffer.from(JSON.stringify(moved ?? {})));
  }
  await transport.remove(aside);
}

function held(transport: NasTransport, path: string, owner: NasLockOwner, staleMs: number): HeldNasLock {
  const beat = setInterval(() => void transport.touch(`${path}/${OWNER}`).catch(() => undefined), Math.max(1000, staleMs / 4));
  beat.unref();
  return {
    owner,
    async verify() {
      const current = parseOwner(await transport.readFile(`${path}/${OWNER}`));
      if (current?.token !== owner.token) {
        throw new LockedError('the NAS lock was taken from us (it was judged stale); nothing was written', {
          remedy: 'run the command again',
        });
      }
    },
    async release() {
      clearInterval(beat);
      const current = parseOwner(await transport.readFile(`${path}/${OWNER}`).catch(() => undefined));
      if (current?.token === owner.token) await transport.remove(path);
    },
  };
}

function parseOwner(data: Buffer | undefined): NasLockOwner | undefined {
  if (!data) return undefined;
  try {
    const parsed = JSON.parse(data.toString('utf8')) as NasLockOwner;
    return typeof parsed.token === 'string' ? parsed : undefined;
  } catch {
    return undefined;
  }
}
