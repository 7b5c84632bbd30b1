import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NasUnreachableError } from '../../../lib/errors.js';
import { busyLimitMs, stallError, streamVerdict } from '../../../lib/nas/stall.js';

describe('streamVerdict', () => {
  const limits = { stallMs: 30_000, busyMaxMs: 90_000 };
  it('goes on while bytes move', () => assert.equal(streamVerdict(100_000, { movedAt: 99_000, aliveAt: 0 }, limits), 'moving'));
  it('stops once nothing moved for the deadline', () => assert.equal(streamVerdict(130_000, { movedAt: 100_000, aliveAt: 0 }, limits), 'stalled'));
  it('counts the NAS saying it is busy as activity', () => assert.equal(streamVerdict(130_000, { movedAt: 100_000, aliveAt: 129_000 }, limits), 'moving'));
  it('but not for longer than the busy limit', () => assert.equal(streamVerdict(190_000, { movedAt: 100_000, aliveAt: 189_000 }, limits), 'busy-too-long'));
  it('allows a busy phase as long as a slow disk needs for the layer', () => {
    assert.equal(busyLimitMs(30_000, 0), 30_000);
    assert.equal(busyLimitMs(30_000, 2 * 2 ** 30), 30_000 + 256_000);
  });
});

describe('stallError', () => {
  it('names the NAS, what was moving, the deadline and the remedy', () => {
    const error = stallError({ where: 'ssh kss@nas:22 /v/kss', direction: 'pull', hash: 'ab'.repeat(32), verdict: 'stalled', stallMs: 30_000, done: 10, size: 100 });
    assert.ok(error instanceof NasUnreachableError);
    assert.equal(error.exitCode, 8);
    assert.equal(error.message, `the NAS (ssh kss@nas:22 /v/kss) sent nothing for 30 s (stallSeconds) while pulling layer ${'ab'.repeat(32)} (10 of 100 bytes received): the transfer was stopped`);
    assert.match(error.remedy ?? '', /kss doctor.*resumes.*stallSeconds/u);
    const push = stallError({ where: '/mnt/nas', direction: 'push', hash: 'h', verdict: 'stalled', stallMs: 5000 });
    assert.equal(push.message, 'the NAS (/mnt/nas) took nothing for 5 s (stallSeconds) while pushing layer h: the transfer was stopped');
    const busy = stallError({ where: 'w', direction: 'push', hash: 'h', verdict: 'busy-too-long', stallMs: 5000, busyMaxMs: 9000 });
    assert.match(busy.message, /^the NAS \(w\) said it was busy but took no data for 9 s, .* while pushing layer h: the transfer was stopped$/u);
  });
});
