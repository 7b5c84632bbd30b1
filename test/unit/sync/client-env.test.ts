// readClientEnvironment over a fake /proc tree: which processes it looks at, and what
// it believes. test/integration/client-env.test.ts does the same on the real /proc.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readClientEnvironment } from '../../../lib/sync/client-env.js';

const work = mkdtempSync(join(tmpdir(), 'kss-client-env-'));
after(() => rmSync(work, { recursive: true, force: true }));
const virsh = join(work, 'virsh');
writeFileSync(virsh, 'the real virsh');
const impostor = join(work, 'bin', 'virsh');
mkdirSync(join(work, 'bin'));
copyFileSync(virsh, impostor); // the same bytes and name, another file
const groupFile = join(work, 'group');
writeFileSync(groupFile, 'root:x:0:\nlibvirt:x:106:alice\nalice:x:1000:\n');

interface FakeProcess {
  argv: string[];
  exe?: string;
  uid?: [number, number];
  groups?: number[];
  environ?: string;
  mountNamespace?: string;
}

let trees = 0;
/** A /proc with these processes (by pid); `self` in mount namespace mnt:[1]. */
function fakeProc(processes: Record<string, FakeProcess>): string {
  const proc = join(work, `proc${(trees += 1)}`);
  mkdirSync(join(proc, 'self', 'ns'), { recursive: true });
  symlinkSync('mnt:[1]', join(proc, 'self', 'ns', 'mnt'));
  for (const [pid, p] of Object.entries(processes)) {
    mkdirSync(join(proc, pid, 'ns'), { recursive: true });
    writeFileSync(join(proc, pid, 'cmdline'), `${p.argv.join('\0')}\0`);
    symlinkSync(p.mountNamespace ?? 'mnt:[1]', join(proc, pid, 'ns', 'mnt'));
    // A process whose argv does not match has no exe or status here: they must not be read.
    if (p.exe !== undefined) symlinkSync(p.exe, join(proc, pid, 'exe'));
    if (p.uid !== undefined) {
      const [real, effective] = p.uid;
      const [gid, ...groups] = p.groups ?? [0];
      writeFileSync(join(proc, pid, 'status'), `Name:\tx\nUid:\t${real}\t${effective}\t${effective}\t${effective}\nGid:\t${gid}\t${gid}\t${gid}\t${gid}\nGroups:\t${groups.join(' ')}\n`);
    }
    writeFileSync(join(proc, pid, 'environ'), p.environ ?? '');
  }
  return proc;
}

const read = (proc: string) => readClientEnvironment('work', { proc, virsh, groupFile });
const start = ['virsh', 'start', 'work'];
const stealing = 'PATH=/bin\0KSS_STEAL_LEASE=1\0';

describe('readClientEnvironment', () => {
  it('reads the environment of the one virsh start client run by root', async () => {
    const proc = fakeProc({ 10: { argv: start, exe: virsh, uid: [0, 0], environ: stealing }, 11: { argv: ['bash'] }, 12: { argv: ['virsh', 'start', 'other'] } });
    assert.deepEqual(await read(proc), { skipSync: false, stealLease: true, note: 'virsh start client pid 10 (root)' });
  });

  it('believes a member of the group libvirt', async () => {
    const proc = fakeProc({ 10: { argv: start, exe: virsh, uid: [1000, 1000], groups: [1000, 106], environ: 'KSS_NO_SYNC=1\0' } });
    assert.deepEqual(await read(proc), { skipSync: true, stealLease: false, note: 'virsh start client pid 10 (uid 1000, group libvirt)' });
  });

  it('ignores a process named virsh that does not run the virsh binary, even as root', async () => {
    const proc = fakeProc({ 10: { argv: start, exe: impostor, uid: [0, 0], environ: stealing } });
    const result = await read(proc);
    assert.equal(result.stealLease, false);
    assert.match(result.note, /^no trusted virsh start client \(ignored: pid 10 is named virsh but does not run the virsh binary\)$/u);
    assert.equal(result.ignored, true, 'worth a log line');
  });

  it('ignores the real virsh run by someone outside the group libvirt', async () => {
    const proc = fakeProc({ 10: { argv: start, exe: virsh, uid: [1000, 1000], groups: [1000], environ: stealing } });
    assert.equal((await read(proc)).stealLease, false);
  });

  it('an impostor beside the real client neither counts nor hides it', async () => {
    const proc = fakeProc({ 9: { argv: start, exe: impostor, uid: [65534, 65534], groups: [65534], environ: 'KSS_NO_SYNC=1\0' }, 10: { argv: start, exe: virsh, uid: [0, 0], environ: stealing } });
    const result = await read(proc);
    assert.deepEqual({ ...result, note: '' }, { skipSync: false, stealLease: true, note: '', ignored: true });
    assert.match(result.note, /^virsh start client pid 10 \(root\) \(ignored: pid 9 /u);
  });

  it('leaves out another mount namespace, and two trusted clients cancel each other', async () => {
    const elsewhere = fakeProc({ 10: { argv: start, exe: virsh, uid: [0, 0], environ: stealing, mountNamespace: 'mnt:[2]' } });
    assert.deepEqual(await read(elsewhere), { skipSync: false, stealLease: false, note: 'no local virsh start client' });
    const two = fakeProc({ 10: { argv: start, exe: virsh, uid: [0, 0], environ: stealing }, 11: { argv: ['/usr/bin/virsh', 'start', '--domain', 'work'], exe: virsh, uid: [0, 0] } });
    assert.deepEqual(await read(two), { skipSync: false, stealLease: false, note: '2 virsh start clients: ignored', ignored: true });
  });

  it('a candidate whose exe or status cannot be read is not believed', async () => {
    const proc = fakeProc({ 10: { argv: start, uid: [0, 0], environ: stealing }, 11: { argv: start, exe: virsh, environ: stealing } });
    assert.deepEqual(await read(proc), {
      skipSync: false,
      stealLease: false,
      note: 'no trusted virsh start client (ignored: pid 10 could not be looked at; pid 11 could not be looked at)',
      ignored: true,
    });
  });

  it('without any virsh to compare with, nobody is believed', async () => {
    const proc = fakeProc({ 10: { argv: start, exe: virsh, uid: [0, 0], environ: stealing } });
    const result = await readClientEnvironment('work', { proc, virsh: join(work, 'absent'), groupFile });
    assert.equal(result.stealLease, false);
  });
});
