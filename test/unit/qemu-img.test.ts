import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checkCommand,
  compareCommand,
  createOverlayCommand,
  flattenCommand,
  infoChainCommand,
  mapShowsOwnData,
  parseChain,
  parseCheck,
  rebaseSafeCommand,
  rebaseUnsafeCommand,
  safeBackingRef,
} from '../../lib/qemu-img.js';

describe('qemu-img commands', () => {
  it('builds argv without any shell', () => {
    assert.deepEqual(createOverlayCommand('/img/-my disk.qcow2', 'my disk.qcow2.layers/ab.qcow2'), {
      file: 'qemu-img',
      args: ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', 'my disk.qcow2.layers/ab.qcow2', '/img/-my disk.qcow2'],
    });
    assert.deepEqual(rebaseUnsafeCommand('/l/x.qcow2', 'p.qcow2').args, ['rebase', '-q', '-u', '-f', 'qcow2', '-F', 'qcow2', '-b', 'p.qcow2', '/l/x.qcow2']);
    assert.deepEqual(rebaseSafeCommand('/l/x.qcow2', 'p.qcow2').args, ['rebase', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', 'p.qcow2', '/l/x.qcow2']);
    assert.deepEqual(createOverlayCommand('/t.qcow2', 't.qcow2.layers/ab.qcow2', { nocow: true }).args.slice(3, 7), ['qcow2', '-o', 'nocow=on', '-F']);
    assert.deepEqual(flattenCommand('/a', '/b').args, ['convert', '-q', '-f', 'qcow2', '-O', 'qcow2', '/a', '/b']);
    assert.deepEqual(flattenCommand('/a.img', '/b', 'raw').args, ['convert', '-q', '-f', 'raw', '-O', 'qcow2', '/a.img', '/b']);
    assert.deepEqual(compareCommand('/a.img', '/b', ['raw', 'qcow2']).args, ['compare', '-q', '-f', 'raw', '-F', 'qcow2', '/a.img', '/b']);
    assert.deepEqual(infoChainCommand('/a').args, ['info', '--backing-chain', '--output=json', '-U', '/a']);
    assert.deepEqual(checkCommand('/a').okExitCodes, [0, 2, 3]);
  });

  it('refuses relative image paths, which qemu-img could read as options or protocols', () => {
    assert.throws(() => infoChainCommand('-disk.qcow2'), /must be absolute/);
    assert.throws(() => createOverlayCommand('nbd:x', 'b.qcow2'), /must be absolute/);
  });

  const refs: Array<[string, string]> = [
    ['ab12.qcow2', 'ab12.qcow2'],
    ['disk.qcow2.layers/ab.qcow2', 'disk.qcow2.layers/ab.qcow2'],
    ['-disk.qcow2.layers/ab.qcow2', './-disk.qcow2.layers/ab.qcow2'],
    ['win:10.qcow2.layers/ab.qcow2', './win:10.qcow2.layers/ab.qcow2'],
    ['dir/with:colon-after-slash.qcow2', 'dir/with:colon-after-slash.qcow2'],
  ];
  for (const [ref, expected] of refs) {
    it(`writes backing reference ${ref} as ${expected}`, () => assert.equal(safeBackingRef(ref), expected));
  }
  it('refuses absolute backing references', () => assert.throws(() => safeBackingRef('/abs.qcow2'), /must be relative/));
});

describe('qemu-img output', () => {
  it('parses a backing chain', () => {
    const json = JSON.stringify([
      { filename: '/i/top.qcow2', format: 'qcow2', 'virtual-size': 100, 'actual-size': 7, 'backing-filename': 'top.qcow2.layers/a.qcow2', 'full-backing-filename': '/i/top.qcow2.layers/a.qcow2', 'backing-filename-format': 'qcow2' },
      { filename: '/i/top.qcow2.layers/a.qcow2', format: 'qcow2', 'virtual-size': 100, 'actual-size': 9 },
    ]);
    assert.deepEqual(parseChain(json), [
      { path: '/i/top.qcow2', format: 'qcow2', virtualSize: 100, actualSize: 7, backingRef: 'top.qcow2.layers/a.qcow2', backingPath: '/i/top.qcow2.layers/a.qcow2', backingFormat: 'qcow2' },
      { path: '/i/top.qcow2.layers/a.qcow2', format: 'qcow2', virtualSize: 100, actualSize: 9, backingRef: undefined, backingPath: undefined, backingFormat: undefined },
    ]);
  });

  const maps: Array<[string, unknown[], boolean]> = [
    ['an empty overlay', [{ start: 0, length: 10, depth: 1, present: false }], false],
    ['data in the overlay', [{ start: 0, length: 5, depth: 1 }, { start: 5, length: 5, depth: 0, data: true }], true],
    ['zeroes written over the backing', [{ start: 0, length: 10, depth: 0, zero: true, data: false }], true],
    ['only backing data', [{ start: 0, length: 5, depth: 2, data: true }], false],
  ];
  for (const [name, extents, expected] of maps) {
    it(`tells own data in ${name}: ${expected}`, () => assert.equal(mapShowsOwnData(JSON.stringify(extents)), expected));
  }

  it('parses a check report', () => {
    assert.deepEqual(parseCheck('{"check-errors": 0, "corruptions": 2, "leaks": 1}'), { corruptions: 2, leaks: 1, checkErrors: 0 });
    assert.deepEqual(parseCheck('{"check-errors": 0}'), { corruptions: 0, leaks: 0, checkErrors: 0 });
  });
});
