import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chooseFace } from '../../lib/face.js';

describe('chooseFace', () => {
  const cases: Array<[string, string[], unknown]> = [
    ['/etc/libvirt/hooks/qemu', ['vm', 'prepare', 'begin', '-'], { face: 'hook', hookArgs: ['vm', 'prepare', 'begin', '-'] }],
    ['qemu', ['vm', 'release', 'end', '-'], { face: 'hook', hookArgs: ['vm', 'release', 'end', '-'] }],
    ['/etc/libvirt/hooks/qemu.d/kvm-snapshot-sync', ['vm', 'start', 'begin', '-'], { face: 'hook', hookArgs: ['vm', 'start', 'begin', '-'] }],
    ['/usr/local/bin/kss', ['hook', 'qemu', 'vm', 'prepare', 'begin', '-'], { face: 'hook', hookArgs: ['vm', 'prepare', 'begin', '-'] }],
    ['/usr/local/bin/kss', ['--version'], { face: 'cli', args: ['--version'] }],
    ['/usr/local/bin/kvm-snapshot-sync', ['hook'], { face: 'cli', args: ['hook'] }],
    ['/usr/local/bin/kvm-snapshot-sync', ['config', 'hook', 'qemu'], { face: 'cli', args: ['config', 'hook', 'qemu'] }],
    ['/opt/qemu-tools/kss', [], { face: 'cli', args: [] }],
  ];
  for (const [invokedAs, args, expected] of cases) {
    it(`${invokedAs} ${args.join(' ')}`, () => assert.deepEqual(chooseFace(invokedAs, args), expected));
  }
});
