// judgeSync: where a domain stands, from the local state and the NAS view. Pure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { judgeSync, lastProgress, type SyncState } from '../../../lib/sync/status.js';

describe('judgeSync', () => {
  const nas = (head: string | null) => ({ reachable: true as const, head, lease: null });
  const cases: Array<[string, { synced: string | null; pending: number }, Parameters<typeof judgeSync>[1], SyncState]> = [
    ['same newest generation', { synced: 'a', pending: 0 }, nas('a'), 'synced'],
    ['the NAS moved on, nothing here', { synced: 'a', pending: 0 }, nas('b'), 'behind'],
    ['never synced here, the NAS has it', { synced: null, pending: 0 }, nas('b'), 'behind'],
    ['unpushed here, the NAS where we left it', { synced: 'a', pending: 2 }, nas('a'), 'ahead'],
    ['enabled here, nothing on the NAS', { synced: null, pending: 1 }, nas(null), 'ahead'],
    ['unpushed here and the NAS moved on', { synced: 'a', pending: 1 }, nas('b'), 'conflict'],
    ['nothing anywhere', { synced: null, pending: 0 }, nas(null), 'not-enabled'],
    ['the NAS unreachable', { synced: 'a', pending: 1 }, { reachable: false, problem: 'down' }, 'offline'],
  ];
  for (const [name, local, view, expected] of cases) it(name, () => assert.equal(judgeSync(local, view), expected));
});

describe('lastProgress', () => {
  it("finds the newest transfer progress in a domain's log, or nothing", () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-progress-'));
    try {
      const log = join(dir, 'vm.log');
      writeFileSync(
        log,
        [
          '2026-11-22T06:00:00.000Z INFO  pushing layer disk=vda',
          '2026-11-22T06:00:00.100Z INFO  push vda 3f2a9c0d1e2b: 0 B of 2.0 GiB (0%), 0 B/s',
          '2026-11-22T06:00:10.100Z INFO  push vda 3f2a9c0d1e2b: 1.1 GiB of 2.0 GiB (55%), 112 MB/s, ETA 8 s',
          '2026-11-22T06:00:10.200Z INFO  still working',
          '',
        ].join('\n'),
      );
      assert.equal(lastProgress(log), 'push vda 3f2a9c0d1e2b: 1.1 GiB of 2.0 GiB (55%), 112 MB/s, ETA 8 s');
      writeFileSync(log, '2026-11-22T06:00:00.000Z INFO  stop finished\n');
      assert.equal(lastProgress(log), undefined);
      assert.equal(lastProgress(join(dir, 'none.log')), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
