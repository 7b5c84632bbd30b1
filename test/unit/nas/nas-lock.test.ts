// What a locked NAS operation does when it finds the lock held, over an in-memory
// transport: the races that real tools cannot produce on demand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LockedError } from '../../../lib/errors.js';
import { lockClaim, NasLockWaiter } from '../../../lib/nas/nas-lock.js';
import type { ExclusiveResult, NasTransport } from '../../../lib/nas/transport.js';

/** Lock directories and their files in memory. */
function memoryTransport() {
  const files = new Map<string, Buffer>();
  const dirs = new Set<string>();
  const transport: Partial<NasTransport> = {
    where: 'memory',
    readFile: async (path) => files.get(path),
    remove: async (path) => {
      dirs.delete(path);
      for (const key of [...files.keys()]) if (key.startsWith(`${path}/`)) files.delete(key);
    },
    rename: async (from, to) => {
      if (!dirs.has(from)) return false;
      dirs.delete(from);
      dirs.add(to);
      for (const [key, value] of [...files]) {
        if (key.startsWith(`${from}/`)) {
          files.delete(key);
          files.set(`${to}${key.slice(from.length)}`, value);
        }
      }
      return true;
    },
    mkdirExclusive: async (path, owner, data): Promise<ExclusiveResult> => {
      if (dirs.has(path)) return { created: false, ownerData: files.get(`${path}/${owner}`), ageMs: 0 };
      dirs.add(path);
      files.set(`${path}/${owner}`, data);
      return { created: true };
    },
  };
  const hold = (host: string) => {
    const claim = lockClaim('lock', host);
    dirs.add('lock');
    files.set('lock/owner.json', claim.ownerData);
    return claim.ownerData;
  };
  return { transport: transport as NasTransport, files, dirs, hold };
}

const options = { host: 'desk', staleMs: 60_000 };

describe('NAS lock waiter', () => {
  it('waits for a live holder, backing off, then refuses naming the holder', async () => {
    const { transport, hold } = memoryTransport();
    const ownerData = hold('laptop');
    const sleeps: number[] = [];
    const waiter = new NasLockWaiter(transport, 'lock', { ...options, waitMs: 60_000, sleep: async (ms) => void sleeps.push(ms) });
    for (let i = 0; i < 6; i += 1) await waiter.busy({ ownerData, ageMs: 1000 });
    assert.deepEqual(sleeps, [100, 200, 400, 800, 1600, 1600]);
    const impatient = new NasLockWaiter(transport, 'lock', { ...options, waitMs: 0 });
    await assert.rejects(impatient.busy({ ownerData, ageMs: 1000 }), (error: unknown) => {
      assert.ok(error instanceof LockedError);
      assert.match(error.message, /by host laptop \(pid \d+\) since /);
      assert.match(error.remedy ?? '', /frees itself after 60 s/);
      return true;
    });
  });

  it('breaks a stale lock at once', async () => {
    const { transport, dirs, files, hold } = memoryTransport();
    const ownerData = hold('dead');
    const waiter = new NasLockWaiter(transport, 'lock', { ...options, waitMs: 0 });
    await waiter.busy({ ownerData, ageMs: 120_000 });
    assert.deepEqual([...dirs], [], 'the lock and what it was renamed to are gone');
    assert.equal(files.size, 0);
  });

  it('gives back a live lock taken by mistake when two breakers race', async () => {
    const { transport, files, hold } = memoryTransport();
    const stale = hold('dead');
    // Between our look and our rename, another breaker removed the stale lock and a live
    // holder took the lock anew.
    const realRename = transport.rename.bind(transport);
    let raced = false;
    transport.rename = async (from, to) => {
      if (!raced) {
        raced = true;
        await realRename(from, `${from}.gone`);
        await transport.mkdirExclusive('lock', 'owner.json', Buffer.from(JSON.stringify({ host: 'live', pid: 1, token: 'live', since: 'now' })));
      }
      return realRename(from, to);
    };
    await new NasLockWaiter(transport, 'lock', { ...options, waitMs: 0 }).busy({ ownerData: stale, ageMs: 120_000 });
    assert.equal(JSON.parse((files.get('lock/owner.json') as Buffer).toString()).token, 'live', 'the live holder has its lock back');
  });
});
