import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { findHookEntry } from '../../hooks/dispatch.js';

describe('hook dispatch table', () => {
  it('handles prepare begin (a failure aborts the start) and release end (it does not)', () => {
    assert.equal(findHookEntry('prepare', 'begin')?.failureAbortsStart, true);
    assert.equal(findHookEntry('release', 'end')?.failureAbortsStart, false);
  });
  const ignored: Array<[string | undefined, string | undefined]> = [
    ['start', 'begin'],
    ['started', 'begin'],
    ['stopped', 'end'],
    ['reconnect', 'begin'],
    ['migrate', 'begin'],
    ['restore', 'begin'],
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
