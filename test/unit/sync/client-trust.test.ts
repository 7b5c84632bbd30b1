import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { chooseClient, flagsFromEnvironment, isVirshStart, judgeClient, parseProcStatus, type ProcessCredentials } from '../../../lib/sync/client-trust.js';

describe('isVirshStart', () => {
  const rows: Array<[string[], boolean]> = [
    [['virsh', 'start', 'work'], true],
    [['/usr/bin/virsh', '-c', 'qemu:///system', 'start', 'work'], true],
    [['virsh', 'start', '--domain', 'work'], true],
    [['virsh', 'start', 'work2'], false],
    [['virsh', 'destroy', 'work'], false],
    [['virsh'], false],
    [['bash', '-c', 'virsh start work'], false],
    [['myvirsh', 'start', 'work'], false],
  ];
  for (const [argv, expected] of rows) it(`${argv.join(' ')} -> ${expected}`, () => assert.equal(isVirshStart(argv, 'work'), expected));
});

describe('flagsFromEnvironment', () => {
  it('reads the KSS_ variables', () => {
    assert.deepEqual(flagsFromEnvironment('PATH=/bin\0KSS_NO_SYNC=1\0'), { skipSync: true, stealLease: false });
    assert.deepEqual(flagsFromEnvironment('KSS_STEAL_LEASE=yes\0KSS_NO_SYNC=0\0'), { skipSync: false, stealLease: true });
    assert.deepEqual(flagsFromEnvironment(''), { skipSync: false, stealLease: false });
  });
});

describe('parseProcStatus', () => {
  const status = (uid: string, gid: string, groups: string) => `Name:\tvirsh\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t${uid}\nGid:\t${gid}\nFDSize:\t64\nGroups:\t${groups}\nNStgid:\t7\n`;
  const rows: Array<[string, string, ProcessCredentials | undefined]> = [
    ['root', status('0\t0\t0\t0', '0\t0\t0\t0', ''), { uid: { real: 0, effective: 0 }, groups: [0] }],
    ['a user in two groups', status('1000\t1000\t1000\t1000', '1000\t1000\t1000\t1000', '24 106 '), { uid: { real: 1000, effective: 1000 }, groups: [1000, 24, 106] }],
    ['real and effective apart', status('1000\t0\t0\t0', '1000\t50\t50\t50', ''), { uid: { real: 1000, effective: 0 }, groups: [50] }],
    ['no Groups line', 'Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n', undefined],
    ['no Uid line', 'Gid:\t0\t0\t0\t0\nGroups:\t\n', undefined],
    ['garbage', status('x\t0', '0\t0\t0\t0', ''), undefined],
  ];
  for (const [name, text, expected] of rows) it(name, () => assert.deepEqual(parseProcStatus(text), expected));
});

describe('judgeClient', () => {
  const LIBVIRT = 106;
  const as = (real: number, effective: number, groups: number[] = []): ProcessCredentials => ({ uid: { real, effective }, groups });
  const rows: Array<[string, boolean, ProcessCredentials, number | undefined, boolean, RegExp]> = [
    ['the real virsh run by root', true, as(0, 0, [0]), LIBVIRT, true, /pid 7 \(root\)/u],
    ['the real virsh run by a member of libvirt', true, as(1000, 1000, [1000, LIBVIRT]), LIBVIRT, true, /group libvirt/u],
    ['libvirt as the effective primary group', true, as(1000, 1000, [LIBVIRT]), LIBVIRT, true, /group libvirt/u],
    ['the real virsh run by someone else', true, as(1000, 1000, [1000, 24]), LIBVIRT, false, /uid 1000, neither root nor in group libvirt/u],
    ['no libvirt group on this machine', true, as(1000, 1000, [1000, LIBVIRT]), undefined, false, /neither root/u],
    ['root only in effect (a set-uid program of someone else)', true, as(1000, 0, [1000]), LIBVIRT, false, /neither root/u],
    ['root only in its real uid', true, as(0, 1000, [1000]), LIBVIRT, false, /neither root/u],
    ['an interpreter or a copy named virsh, run by root', false, as(0, 0, [0]), LIBVIRT, false, /does not run the virsh binary/u],
    ['not virsh, run by someone else', false, as(1000, 1000, [1000]), LIBVIRT, false, /does not run the virsh binary/u],
  ];
  for (const [name, exeIsVirsh, credentials, gid, trusted, note] of rows) {
    it(`${name} -> ${trusted ? 'trusted' : 'ignored'}`, () => {
      const verdict = judgeClient({ pid: '7', exeIsVirsh, credentials }, gid);
      assert.equal(verdict.trusted, trusted);
      assert.equal(verdict.pid, '7');
      assert.match(verdict.note, note);
    });
  }
});

describe('chooseClient', () => {
  const trusted = (pid: string) => ({ pid, trusted: true, note: `virsh start client pid ${pid} (root)` });
  const ignored = (pid: string) => ({ pid, trusted: false, note: `pid ${pid} is named virsh but does not run the virsh binary` });
  it('no candidate', () => assert.deepEqual(chooseClient([]), { pid: undefined, note: 'no local virsh start client', ignored: false }));
  it('one trusted client', () => assert.deepEqual(chooseClient([trusted('5')]), { pid: '5', note: 'virsh start client pid 5 (root)', ignored: false }));
  it('an untrusted one beside a trusted one does not hide it', () => {
    assert.deepEqual(chooseClient([ignored('4'), trusted('5')]), {
      pid: '5',
      note: 'virsh start client pid 5 (root) (ignored: pid 4 is named virsh but does not run the virsh binary)',
      ignored: true,
    });
  });
  it('only untrusted ones', () => {
    assert.deepEqual(chooseClient([ignored('4')]), {
      pid: undefined,
      note: 'no trusted virsh start client (ignored: pid 4 is named virsh but does not run the virsh binary)',
      ignored: true,
    });
  });
  it('two trusted: which one started it cannot be told', () => assert.deepEqual(chooseClient([trusted('5'), trusted('6')]), { pid: undefined, note: '2 virsh start clients: ignored', ignored: true }));
});
