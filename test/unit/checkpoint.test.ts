import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseBitmaps } from '../../lib/checkpoint/remainder.js';
import { checkpointName, isOfSession } from '../../lib/checkpoint/session.js';
import { checkpointLine } from '../../lib/commands/status.js';

describe('checkpoints: pure parts', () => {
  it('reads the bitmaps qemu-img info reports, and which were not closed cleanly', () => {
    const info = { 'format-specific': { type: 'qcow2', data: { bitmaps: [{ name: 'kss-a-1', flags: ['auto'], granularity: 65536 }, { name: 'kss-a-0', flags: ['in-use', 'auto'], granularity: 65536 }] } } };
    assert.deepEqual(parseBitmaps(JSON.stringify(info)), [
      { name: 'kss-a-1', inUse: false },
      { name: 'kss-a-0', inUse: true },
    ]);
    assert.deepEqual(parseBitmaps(JSON.stringify({ 'format-specific': { type: 'qcow2', data: {} } })), []);
    assert.deepEqual(parseBitmaps(JSON.stringify({ format: 'raw' })), []);
  });

  it('names checkpoints by session, and tells a session’s own from another’s', () => {
    assert.equal(checkpointName('ab12', 3), 'kss-ab12-3');
    assert.ok(isOfSession('kss-ab12-3', 'ab12'));
    assert.ok(!isOfSession('kss-ab123-3', 'ab12'), 'a session whose id begins the same is another');
    assert.ok(!isOfSession('backup-1', 'ab12'));
  });

  it('says whose checkpoint the NAS head is, and how old', () => {
    const at = '2026-12-01T10:00:00.000Z';
    const now = Date.parse(at);
    assert.equal(checkpointLine({ host: 'desk', at }, 'laptop', now + 20_000), `the NAS has a checkpoint of the VM running on desk, less than a minute old (${at}): what a power cut then would have left`);
    assert.match(checkpointLine({ host: 'desk', at }, 'desk', now + 60_000), /running here, 1 minute old/u);
    assert.match(checkpointLine({ host: 'desk', at }, 'laptop', now + 7 * 60_000), /7 minutes old/u);
    assert.match(checkpointLine({ host: 'desk', at }, 'laptop', now + 5 * 3600_000), /5 hours old/u);
  });
});
