// The NAS lock's decisions, over an in-memory transport: the races that real tools
// cannot produce on demand.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LockedError } from '../../../lib/errors.js';
import { acquireNasLock } from '../../../lib/nas/nas-lock.js';
import type { ExclusiveResult, NasTransport } from '../../../lib/nas/transport.js';

/** Files and directories in memory; `ages` gives a directory's idle time. */
function memoryTransport(files = new Map<string, Buffer>(), ages = new Map<string, number>()) {
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
      if (dirs.has(path)) return { created: false, ownerData: files.get(`${path}/${owner}`), ageMs: ages.get(path) ?? 0 };
      dirs.add(path);
      files.set(`${path}/${owner}`, data);
      return { created: true };
    },
    touch: async () => {},
  };
  return { transport: transport as NasTransport, files, dirs, ages };
}

const fast = { waitMs: 50, staleMs: 60_000, sleep: async () => {} };

describe('NAS lock', () => {
  it('is taken, verified and released', async () => {
    const { transport, dirs } = memoryTransport();
    const lock = await acquireNasLock(transport, 'lock', { host: 'desk', ...fast });
    await lock.verify();
    await lock.release();
    assert.equal(dirs.has('lock'), false);
  });

  it('refuses while another host holds it, naming the host', async () => {
    const { transport } = memoryTransport();
    const held = await acquireNasLock(transport, 'lock', { host: 'laptop', ...fast });
    await assert.rejects(acquireNasLock(transport, 'lock', { host: 'desk', ...fast }), (error: unknown) => {
      assert.ok(error instanceof LockedError);
      assert.match(error.message, /by host laptop \(pid \d+\) since /);
      return true;
    });
    await held.release();
  });

  it('breaks a stale lock and takes it', async () => {
    const { transport, ages } = memoryTransport();
    await acquireNasLock(transport, 'lock', { host: 'dead', ...fast });
    ages.set('lock', 120_000);
    const lock = await acquireNasLock(transport, 'lock', { host: 'desk', ...fast });
    assert.equal(lock.owner.host, 'desk');
    await lock.verify();
  });

  it('never lets two writers through: a holder whose lock was taken finds out before writing', async () => {
    const { transport, ages } = memoryTransport();
    const slow = await acquireNasLock(transport, 'lock', { host: 'slow', ...fast });
    ages.set('lock', 120_000); // judged stale while slow still works
    const other = await acquireNasLock(transport, 'lock', { host: 'other', ...fast });
    await other.verify();
    await assert.rejects(slow.verify(), /taken from us/);
    await slow.release(); // and does not remove the other's lock
    await other.verify();
  });

  it('gives back a live lock taken by mistake when two breakers race', async () => {
    const { transport, files, ages } = memoryTransport();
    await acquireNasLock(transport, 'lock', { host: 'dead', ...fast });
    ages.set('lock', 120_000);
    // Between a breaker's look and its rename, a live holder replaced the stale lock.
    const realRename = transport.rename.bind(transport);
    let raced = false;
    transport.rename = async (from, to) => {
      if (!raced) {
        raced = true;
        await realRename(from, `${from}.gone`);
        ages.delete('lock');
        await transport.mkdirExclusive('lock', 'owner.json', Buffer.from(JSON.stringify({ host: 'live', pid: 1, token: 'live', since: 'now' })));
      }
      return realRename(from, to);
    };
    await assert.rejects(acquireNasLock(transport, 'lock', { host: 'desk', ...fast }), LockedError);
    assert.equal(JSON.parse((files.get('lock/owner.json') as Buffer).toString()).token, 'live', 'the live holder has its lock back');
  });
});
