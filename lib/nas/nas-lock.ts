// The lock that serializes manifest updates of one domain across hosts. It is a
// directory on the NAS (mkdir is atomic on local disks, NFS, SMB and over SSH) holding
// owner.json: host, pid, a random token, since when. It is held only for the one round
// trip of a compare-and-swap (NasTransport.replaceIfUnchanged), so a lock that stays
// was left by a process or connection that died in that moment. A lock whose newest
// activity is older than `staleMs` by the NAS's own clock (the hosts' clocks may
// disagree) is broken: renamed away, then checked to be the lock judged stale; if a
// live holder's lock was taken by mistake (two breakers at once), it is put back.
// The compare-and-swap on the manifest's content is what keeps the manifest right.
import { randomBytes } from 'node:crypto';
import { LockedError } from '../errors.js';
import type { Logger } from '../log.js';
import { isPrintable } from './format.js';
import { OWNER_MAX_BYTES, type LockBusy, type LockClaim, type NasTransport } from './transport.js';

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

/** A claim on the lock at `path` with a new owner token, for one locked operation. */
export function lockClaim(path: string, host: string, now: Date = new Date()): LockClaim {
  const owner: NasLockOwner = { host, pid: process.pid, token: randomBytes(8).toString('hex'), since: now.toISOString() };
  return { path, ownerName: OWNER, ownerData: Buffer.from(JSON.stringify(owner)) };
}

/**
 * What to do when a locked operation found the lock held: break it when it is stale,
 * otherwise wait a little (backing off) for its holder; once `waitMs` have passed
 * since the first call, fail with a LockedError that names the holder.
 */
export class NasLockWaiter {
  private readonly deadline: number;
  private attempt = 0;

  constructor(
    private readonly transport: NasTransport,
    private readonly path: string,
    private readonly options: NasLockOptions,
  ) {
    this.deadline = Date.now() + options.waitMs;
  }

  async busy(found: LockBusy): Promise<void> {
    const holder = parseOwner(found.ownerData);
    if (found.ageMs >= this.options.staleMs) {
      this.options.log?.warn('breaking a stale NAS lock', { lock: this.path, holder: holder?.host, idleSeconds: Math.round(found.ageMs / 1000) });
      await this.breakLock(holder);
      return;
    }
    if (this.attempt === 0) this.options.log?.info('waiting for the NAS lock', { lock: this.path, holder: holder?.host, waitSeconds: Math.round((this.deadline - Date.now()) / 1000) });
    if (Date.now() >= this.deadline) {
      const who = holder ? `host ${holder.host} (pid ${holder.pid}) since ${holder.since}` : 'another process';
      throw new LockedError(`the NAS is being updated for this domain by ${who}`, {
        remedy: `try again in a moment; if ${holder?.host ?? 'that host'} died, the lock frees itself after ${Math.round(this.options.staleMs / 1000)} s`,
      });
    }
    const sleep = this.options.sleep ?? ((ms: number) => new Promise((resolve) => setTimeout(resolve, ms)));
    await sleep(Math.min(100 * 2 ** Math.min(this.attempt++, 4), 2000));
  }

  private async breakLock(stale: NasLockOwner | undefined): Promise<void> {
    const aside = `${this.path}.broken-${randomBytes(4).toString('hex')}`;
    if (!(await this.transport.rename(this.path, aside))) return; // someone else broke it first
    const moved = parseOwner(await this.transport.readFile(`${aside}/${OWNER}`, OWNER_MAX_BYTES));
    if (moved?.token !== stale?.token) {
      // We took a lock that was just made by a live holder: give it back if we can.
      await this.transport.mkdirExclusive(this.path, OWNER, Buffer.from(JSON.stringify(moved ?? {})));
    }
    await this.transport.remove(aside);
  }
}

function parseOwner(data: Buffer | undefined): NasLockOwner | undefined {
  if (!data) return undefined;
  try {
    const parsed = JSON.parse(data.toString('utf8')) as NasLockOwner;
    // Anything can write this file: only an owner that reads like one is shown to a person.
    const sound = typeof parsed.token === 'string' && isPrintable(parsed.host) && Number.isSafeInteger(parsed.pid) && isPrintable(parsed.since);
    return sound ? parsed : undefined;
  } catch {
    return undefined;
  }
}
