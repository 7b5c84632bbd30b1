// judgeSync: where a domain stands, from the local state and the NAS view. Pure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { judgeSync, type SyncState } from '../../../lib/sync/status.js';

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
