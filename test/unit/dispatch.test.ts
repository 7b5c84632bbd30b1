import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CHECKPOINTS_OP, FINISH_STOP_OP, findHookEntry } from '../../hooks/dispatch.js';

describe('hook dispatch table', () => {
  it('handles prepare begin (a failure aborts the start) and release end, started begin, restore begin (they do not)', () => {
    assert.equal(findHookEntry('prepare', 'begin')?.failureAbortsStart, true);
    assert.equal(findHookEntry('release', 'end')?.failureAbortsStart, false);
    assert.equal(findHookEntry('started', 'begin')?.failureAbortsStart, false);
    assert.equal(findHookEntry('restore', 'begin')?.failureAbortsStart, false);
  });
  it('has an internal operation for the work after a stop, which takes no domain XML', () => {
    assert.equal(findHookEntry(FINISH_STOP_OP, 'begin')?.internal, true);
  });
  it('has an internal operation for the checkpoints of a running session', () => {
    assert.equal(findHookEntry(CHECKPOINTS_OP, 'begin')?.internal, true);
    assert.equal(findHookEntry(CHECKPOINTS_OP, 'begin')?.failureAbortsStart, false);
  });
  const ignored: Array<[string | undefined, string | undefined]> = [
    ['start', 'begin'],
    ['stopped', 'end'],
    ['reconnect', 'begin'],
    ['migrate', 'begin'],
    ['attach', 'begin'],
    ['prepare', 'end'],
    ['release', 'begin'],
    ['toString', undefined],
    ['__proto__', undefined],
    [undefined, undefined],
  ];
  for (const [op, subop] of ignored) {
    it(`ignores ${op} ${subop}`, () => assert.equal(findHookEntry(op, subop), undefined));
  }
});
