import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ConfigError,
  DiskStateError,
  ExitCode,
  IntegrityError,
  LockedError,
  ConflictError,
  NasFullError,
  NasUnreachableError,
  LeaseHeldError,
  ToolError,
  UsageError,
  describeError,
  exitCodeFor,
} from '../../lib/errors.js';

describe('exit codes', () => {
  const cases: Array<[unknown, number]> = [
    [new UsageError('x'), 2],
    [new ConfigError('x'), 3],
    [new ToolError('x', 'qemu-img info', 1, ''), 4],
    [new DiskStateError('x'), 5],
    [new IntegrityError('x'), 6],
    [new LockedError('x'), 7],
    [new NasUnreachableError('x'), 8],
    [new ConflictError('x'), 9],
    [new NasFullError('x'), 10],
    [new LeaseHeldError('x'), 11],
    [new TypeError('a bug'), 70],
    ['a thrown string', 70],
  ];
  for (const [error, code] of cases) {
    it(`${(error as Error).name ?? typeof error} exits ${code}`, () => assert.equal(exitCodeFor(error), code));
  }
  it('are all distinct', () => {
    const values = Object.values(ExitCode);
    assert.equal(new Set(values).size, values.length);
  });
});

describe('describeError', () => {
  it('gives the message, the tool output and the remedy', () => {
    const text = describeError(
      new ToolError('qemu-img failed with exit status 1: qemu-img info /x', 'qemu-img info /x', 1, 'Could not open /x', {
        remedy: 'check the path',
      }),
    );
    assert.equal(text, 'qemu-img failed with exit status 1: qemu-img info /x\n  Could not open /x\nTo fix: check the path');
  });
  it('marks anything untyped as a bug, with its stack', () => {
    const text = describeError(new TypeError('undefined is not a function'));
    assert.match(text, /^internal error \(a bug in kvm-snapshot-sync/);
    assert.match(text, /TypeError: undefined is not a function\n +at /);
  });
});
