// End to end with real daemons: two simulated hosts, each with its own libvirtd whose
// hook is the built executable, and a NAS that is a real sshd in a network namespace
// behind a 1 Gbit link. Guest writes and reads go through the running domain.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { readConfig } from '../../lib/config.js';
import { Logger } from '../../lib/log.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, guestDigest, guestDigestAfter, qemuIo, qemuIoAs } from '../helpers/disks.js';
import { CLEAN_PATH, LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { startLibvirtPair, type LibvirtPair } from '../helpers/libvirt-pair.js';
import { SSH_NAS_TOOLS, type SshNas } from '../helpers/ssh-nas.js';
import { forgeHeadDefinition, headDefinition } from '../helpers/nas-definitions.js';
import { requireTools } from '../helpers/tools.js';

const IMAGES = '/var/lib/libvirt/images';
let pair: LibvirtPair | undefined;
let nas: SshNas | undefined;
let desk: LibvirtHost | undefined;
let laptop: LibvirtHost | undefined;

/** Defines a managed two-disk domain on a host (its XML as `edit` makes it); on the first host, also enables it. */
async function defineWork(host: LibvirtHost, domain: string, enable: boolean, edit = (xml: string) => xml): Promise<Record<string, string>> {
  const disks = { vda: `${IMAGES}/${domain}-root.qcow2`, vdb: `${IMAGES}/${domain}-home.qcow2` };
  if (enable) {
    createImage(host.outside(disks.vda), 32 * MiB);
    createImage(host.outside(disks.vdb), 32 * MiB);
    qemuIo(host.outside(disks.vda), 'write -P 0x11 0 4M');
    const config = { ...(await readConfig(host.outside('/etc/kvm-snapshot-sync/config.json'))), stateDir: host.outside('/var/lib/kvm-snapshot-sync') };
    await enableDisks(domain, { vda: host.outside(disks.vda), vdb: host.outside(disks.vdb) }, { config, log: new Logger([]) });
  }
  host.define(domain, edit(tinyDomainXml(domain, disks, true)));
  return disks;
}

function digests(host: LibvirtHost, disks: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(disks).map(([target, path]) => [target, guestDigest(host.outside(path))]));
}

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS)) return;
  pair = await startLibvirtPair('kss-e2e-', { pool: true });
  ({ nas, desk, laptop } = pair);
});
after(() => pair?.stop());

function ready(t: TestContext): boolean {
  return desk !== undefined || requireTools(t, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS);
}

describe('real libvirtd on two hosts, NAS over SSH', () => {
  it('moves a two-disk VM desktop -> laptop -> desktop through virsh start and destroy', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const disks = await defineWork(d, 'work', true);
    await defineWork(l, 'work', false);

    d.mustVirsh('start', 'work');
    d.guestIo('work', 'write -P 0x5a 16M 4M');
    d.guestIo('work', 'write -P 0x6b 1M 2M', 'virtio-disk1');
    d.guestIo('work', 'read -P 0x11 0 4M');
    assert.throws(() => d.guestIo('work', 'read -P 0x99 16M 4M'), /Pattern verification failed/u, 'a wrong pattern is noticed');
    d.mustVirsh('destroy', 'work');
    await d.waitForStop('work');
    const day1 = digests(d, disks);
    // What the laptop's disks must hold after its session: day 1 of every disk, and its one write.
    const day2 = { ...day1, vda: guestDigestAfter(d.outside(disks.vda as string), 'write -P 0x7c 20M 1M') };
    assert.notEqual(day2.vda, day1.vda);

    l.mustVirsh('start', 'work');
    l.guestIo('work', 'read -P 0x5a 16M 4M');
    l.guestIo('work', 'read -P 0x6b 1M 2M', 'virtio-disk1');
    l.guestIo('work', 'write -P 0x7c 20M 1M');
    l.mustVirsh('destroy', 'work');
    await l.waitForStop('work');
    assert.deepEqual(digests(l, disks), day2, "the laptop's disks hold every byte of day 1, and its own write");

    await d.session('work', ['read -P 0x7c 20M 1M', 'read -P 0x5a 16M 3M']);
    assert.deepEqual(digests(d, disks), day2, "the desktop's disks hold every byte of the laptop's session");
    assert.deepEqual(digests(d, disks), digests(l, disks), 'both hosts hold the same bytes');
  });

  it('refuses a start after both hosts changed the VM; each resolution keeps the other side restorable', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    await defineWork(d, 'split', true);
    await defineWork(l, 'split', false);
    await d.session('split');
    await l.session('split', ['write -P 0x21 8M 1M']);
    // The desktop works on yesterday's state without syncing; the laptop works too and pushes.
    await d.session('split', ['read -P 0x11 0 4M', 'write -P 0x31 8M 1M'], ['start', 'split', '--no-sync']);
    await l.session('split', ['write -P 0x41 12M 1M']);
    assert.match(d.hookLog('split'), /kept here \(conflict: the NAS head moved/u, "the desktop's push was refused");

    const refused = d.virsh('start', 'split');
    assert.notEqual(refused.status, 0);
    await d.waitForStop('split'); // a refused start is a stop too
    assert.match(refused.stderr, /split changed both here and on the NAS/u);
    assert.match(refused.stderr, /kss resolve split --keep local, or kss resolve split --keep remote/u);

    // Keep the laptop's (remote) side: the desktop's work becomes a branch.
    const remote = d.kss(['resolve', 'split', '--keep', 'remote']);
    assert.equal(remote.status, 0, remote.stderr);
    const branch = /the other side is branch (\S+)/u.exec(remote.stdout)?.[1] as string;
    assert.ok(branch, remote.stdout);
    await d.session('split', ['read -P 0x21 8M 1M', 'read -P 0x41 12M 1M']);
    assert.match(d.kss(['snapshot', 'list', 'split']).stdout, new RegExp(`branch ${branch}`, 'u'));

    // The branch is restorable: the desktop's lost session comes back as a new generation.
    const back = d.kss(['rollback', 'split', '--to', branch]);
    assert.equal(back.status, 0, back.stderr);
    await d.session('split', ['read -P 0x31 8M 1M', 'read -P 0x11 0 4M']);

    // And keeping the local side: the laptop works offline, the desktop pushes meanwhile.
    await l.session('split', ['read -P 0x21 8M 1M', 'write -P 0x51 16M 1M'], ['start', 'split', '--no-sync']);
    await d.session('split', ['write -P 0x61 20M 1M']);
    const refusedHere = l.virsh('start', 'split');
    assert.notEqual(refusedHere.status, 0);
    assert.match(refusedHere.stderr, /split changed both here and on the NAS/u);
    await l.waitForStop('split');
    const local = l.kss(['resolve', 'split', '--keep', 'local']);
    assert.equal(local.status, 0, local.stderr);
    await l.session('split', ['read -P 0x51 16M 1M', 'read -P 0x00 20M 1M']);
    await d.session('split', ['read -P 0x51 16M 1M', 'read -P 0x00 20M 1M']);
    const kept = /the other side is branch (\S+)/u.exec(local.stdout)?.[1] as string;
    assert.ok(kept, local.stdout);
    const keptBack = d.kss(['rollback', 'split', '--to', kept]);
    assert.equal(keptBack.status, 0, keptBack.stderr);
    await d.session('split', ['read -P 0x61 20M 1M']);
  });

  it('stops without a push when asked, keeping the lease here; the next start pushes', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    await defineWork(d, 'held', true);
    await defineWork(l, 'held', false);
    d.mustVirsh('start', 'held');
    d.guestIo('held', 'write -P 0x71 8M 1M');
    const stopped = d.kss(['stop', 'held', '--no-push', '--force']);
    assert.equal(stopped.status, 0, stopped.stderr);
    assert.match(stopped.stderr, /its changes stay on this host/u);
    await d.waitForStop('held');
    assert.match(d.hookLog('held'), /kept here \(no-push/u);
    const refused = l.virsh('start', 'held');
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /held is in use on host desk/u);
    await l.waitForStop('held');

    await d.session('held'); // pushes what the last stop kept, then starts
    assert.match(d.hookLog('held'), /decision=push-then-start/u);
    await l.session('held', ['read -P 0x71 8M 1M']);
  });

  it('pushes and pulls by hand, with progress (kss push, kss pull)', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    await defineWork(d, 'hand', true);
    await defineWork(l, 'hand', false);
    await d.session('hand');
    d.mustVirsh('start', 'hand');
    d.guestIo('hand', 'write -P 0xa1 4M 2M');
    assert.equal(d.kss(['stop', 'hand', '--no-push', '--force']).status, 0);
    await d.waitForStop('hand');
    const pushed = d.kss(['push', 'hand']);
    assert.equal(pushed.status, 0, pushed.stderr);
    assert.match(pushed.stderr, /push vda [0-9a-f]{12}: .*\(100%\)/u);
    assert.match(pushed.stdout, /^hand: pushed\n$/u);
    assert.equal(d.kss(['wait', 'hand']).status, 0, 'in sync, and the lease given back');

    const pulled = l.kss(['pull', 'hand']);
    assert.equal(pulled.status, 0, pulled.stderr);
    assert.match(pulled.stderr, /pull vda [0-9a-f]{12}: .*\(100%\)/u);
    assert.match(pulled.stdout, /^hand: generation [0-9a-f]{12} from desk .* is here; the next start uses it\n$/u);
    await l.session('hand', ['read -P 0xa1 4M 2M']);
    assert.doesNotMatch(l.hookLog('hand'), /pulling layer/u, 'the start had nothing left to fetch');
    const running = d.inside(['virsh', '-c', 'qemu:///system', 'start', 'hand']);
    assert.equal(running.status, 0, running.stderr);
    const refusedPush = d.kss(['push', 'hand']);
    assert.notEqual(refusedPush.status, 0, 'no push while it runs');
    assert.match(refusedPush.stderr, /hand is running: its disks are in use/u);
    d.mustVirsh('destroy', 'hand');
    await d.waitForStop('hand');
  });

  it('lets exactly one of two hosts pushing at the same moment win; the other exits 9 and names kss resolve', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    await defineWork(d, 'race', true);
    await defineWork(l, 'race', false);
    await d.session('race');
    await l.session('race');
    // Both work on the same generation without the NAS, and keep their sessions here.
    for (const [host, pattern] of [[d, '0xc1'], [l, '0xc2']] as const) {
      assert.equal(host.kss(['start', 'race', '--no-sync']).status, 0);
      host.guestIo('race', `write -P ${pattern} 2M 1M`);
      assert.equal(host.kss(['stop', 'race', '--no-push', '--force']).status, 0);
      await host.waitForStop('race');
    }
    const [fromDesk, fromLaptop] = await Promise.all([d.kssAsync(['push', 'race']), l.kssAsync(['push', 'race'])]);
    const results = [fromDesk, fromLaptop];
    assert.deepEqual(results.map((r) => r.status).sort(), [0, 9], `one wins, the other is told it is a conflict: ${results.map((r) => r.stderr).join('\n---\n')}`);
    const loser = results.find((r) => r.status === 9) as { stderr: string };
    assert.match(loser.stderr, /kss: error: 1 generation\(s\) of race are still not on the NAS: .*conflict.*\nTo fix: .*kss resolve race --keep local, or kss resolve race --keep remote/su);
    const winner = results.indexOf(results.find((r) => r.status === 0) as (typeof results)[number]);
    const [won, lost] = winner === 0 ? [d, l] : [l, d];
    const refused = lost.virsh('start', 'race'); // the loser keeps its day here, for kss resolve
    assert.match(refused.stderr, /race changed both here and on the NAS/u);
    await lost.waitForStop('race');
    await won.session('race', [`read -P ${winner === 0 ? '0xc1' : '0xc2'} 2M 1M`]);
  });

  it('takes a VM out of management losing nothing (kss disable), and back in (kss enable)', async (t) => {
    if (!ready(t)) return;
    const d = desk as LibvirtHost;
    const disks = await defineWork(d, 'gone', true);
    await d.session('gone', ['write -P 0xb1 2M 1M']);
    d.mustVirsh('start', 'gone');
    d.guestIo('gone', 'write -P 0xb2 3M 1M');
    assert.equal(d.kss(['stop', 'gone', '--no-push', '--force']).status, 0);
    await d.waitForStop('gone');
    const before = digests(d, disks);

    const off = d.kss(['disable', 'gone']);
    assert.equal(off.status, 0, off.stderr);
    assert.match(off.stdout, /gone: no longer managed here; vda, vdb standalone again/u);
    assert.match(off.stderr, /1 generation\(s\) never reached the NAS; they are in the disks/u);
    assert.deepEqual(digests(d, disks), before, 'every byte is still there');
    for (const disk of Object.values(disks)) {
      const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', '-U', d.outside(disk)], { encoding: 'utf8' }));
      assert.equal(info['backing-filename'], undefined, `${disk} stands alone`);
    }
    assert.doesNotMatch(d.mustVirsh('dumpxml', 'gone'), /kvm-snapshot-sync/u);
    const manifest = JSON.parse(readFileSync(join((nas as SshNas).root, 'domains', 'gone', 'manifest.json'), 'utf8'));
    assert.equal(manifest.lease, null, 'the lease is given back');

    d.mustVirsh('start', 'gone'); // unmanaged now: the hook leaves it alone
    d.guestIo('gone', 'read -P 0xb2 3M 1M');
    d.mustVirsh('destroy', 'gone');
    const again = d.kss(['enable', 'gone']);
    assert.equal(again.status, 9, again.stderr);
    assert.match(again.stderr, /gone is enabled here, but its first generation is not on the NAS: .*conflict.*\n.*kss resolve gone --keep local/u);
    assert.match(d.mustVirsh('dumpxml', 'gone'), /urn:kvm-snapshot-sync:domain:1/u);
    const kept = d.kss(['resolve', 'gone', '--keep', 'local']);
    assert.equal(kept.status, 0, kept.stderr);
    await d.session('gone', ['read -P 0xb2 3M 1M']);
  });

  it('enables a raw disk (kss enable pushes it with its definition), and sets it up on the other host (kss clone)', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const disk = `${IMAGES}/win.img`;
    execFileSync('truncate', ['-s', '32M', d.outside(disk)]);
    qemuIoAs('raw', d.outside(disk), 'write -P 0x33 1M 2M', 'write -P 0x34 31M 1M');
    const original = guestDigest(d.outside(disk), 'raw');
    d.define('win', tinyDomainXml('win', { vda: disk }, false, ['vda']));

    const enabled = d.kss(['enable', 'win']);
    assert.equal(enabled.status, 0, enabled.stderr);
    assert.match(enabled.stderr, /push vda [0-9a-f]{12}: .*\(100%\)/u, 'the base is pushed with a progress bar');
    assert.match(enabled.stdout, /^win: enabled; generation [0-9a-f]{12} and the definition are on the NAS\n$/u);
    const xml = d.mustVirsh('dumpxml', '--inactive', 'win');
    assert.match(xml, /<driver name='qemu' type='qcow2'\/>\s*<source file='\/var\/lib\/libvirt\/images\/win.img'\/>/u, 'the same path, now qcow2');
    assert.match(xml, /urn:kvm-snapshot-sync:domain:1/u);
    assert.equal(guestDigest(d.outside(disk)), original, 'every byte of the raw disk, through the new top');
    const onNas = headDefinition((nas as SshNas).root, 'win');
    assert.match(onNas, /urn:kvm-snapshot-sync:domain:1/u, 'the NAS has the definition, managed');
    await d.session('win', ['read -P 0x33 1M 2M', 'write -P 0x44 8M 1M']);

    const notHere = l.kss(['delta', 'win']);
    assert.equal(notHere.status, 5);
    assert.match(notHere.stderr, /win is not managed on this host\n.*kss clone win/u);
    const cloned = l.kss(['clone', 'win']);
    assert.equal(cloned.status, 0, cloned.stderr);
    assert.match(cloned.stderr, /pull vda [0-9a-f]{12}: .*\(100%\)/u);
    assert.match(
      cloned.stdout,
      /^win: the definition from the NAS: uuid [0-9a-f-]{36}, 64\.0 MiB, 1 vCPU\n {2}vda → \/var\/lib\/libvirt\/images\/win\.img\n {2}emulator \/usr\/bin\/qemu-system-x86_64\nwin: defined here with generation [0-9a-f]{12} from host desk .*; virsh start win\n$/u,
      'what it defines, then that it did',
    );
    assert.match(l.mustVirsh('dumpxml', 'win'), /urn:kvm-snapshot-sync:domain:1/u);
    const inStep = JSON.parse(l.kss(['delta', 'win', '--json']).stdout);
    assert.deepEqual([inStep.push, inStep.pull, inStep.tops], [{ bytes: 0, layers: 0 }, { bytes: 0, layers: 0, merged: 0, withoutMerged: { bytes: 0, layers: 0 } }, { bytes: 0 }]);
    await l.session('win', ['read -P 0x33 1M 2M', 'read -P 0x44 8M 1M', 'read -P 0x34 31M 1M', 'write -P 0x55 9M 2M']);
    assert.doesNotMatch(l.hookLog('win'), /pulling layer/u, 'the clone had fetched everything');

    const behind = d.kss(['delta', 'win']);
    assert.equal(behind.status, 0, behind.stderr);
    assert.match(behind.stdout, /^win: to push 0 B \(0 layers\).*\nwin: to pull 2\.\d+ MiB \(1 layer\)\n$/u, 'the laptop\'s 2 MiB session');
    await d.session('win', ['read -P 0x55 9M 2M']);
    const again = l.kss(['clone', 'win']);
    assert.equal(again.status, 2, 'a defined domain is not cloned over');
    assert.match(again.stderr, /win is already defined on this host/u);
  });

  describe('kss clone checks the definition it fetched (anything that can write to the NAS can write it)', () => {
    const evilDisk = `${IMAGES}/evil.qcow2`;
    let pushed = ''; // the definition of evil as kss enable put it on the NAS
    before(() => {
      if (!desk || !laptop) return;
      createImage(desk.outside(evilDisk), 16 * MiB);
      desk.define('evil', tinyDomainXml('evil', { vda: evilDisk }, false));
      const enabled = desk.kss(['enable', 'evil']);
      assert.equal(enabled.status, 0, enabled.stderr);
      pushed = headDefinition((nas as SshNas).root, 'evil');
      createImage(laptop.outside(`${IMAGES}/payroll.qcow2`), 16 * MiB);
      laptop.define('payroll', tinyDomainXml('payroll', { vda: `${IMAGES}/payroll.qcow2` }, false));
    });

    /** kss clone evil on the laptop, with this definition on the NAS; it must change nothing there. */
    function refusedClone(xml: string, status: number): string {
      const l = laptop as LibvirtHost;
      forgeHeadDefinition((nas as SshNas).root, 'evil', xml);
      const refused = l.kss(['clone', 'evil']);
      assert.equal(refused.status, status, `${refused.stdout}${refused.stderr}`);
      assert.match(refused.stderr, /^kss: error: the definition of evil on the NAS is refused; nothing was changed here:\n/mu);
      assert.equal(refused.stdout, '', 'nothing to be defined was announced');
      assert.doesNotMatch(refused.stderr, /pull/u, 'no layer was pulled');
      assert.ok(!existsSync(l.outside('/var/lib/kvm-snapshot-sync/domains/evil')), 'no state for evil');
      assert.ok(!existsSync(l.outside(evilDisk)), 'no disk');
      assert.notEqual(l.virsh('domuuid', 'evil').status, 0, 'evil is not defined');
      return refused.stderr;
    }

    it('refuses a definition of evil that names payroll, defined here, and its UUID; payroll stays as it was', (t) => {
      if (!ready(t)) return;
      const l = laptop as LibvirtHost;
      const before = l.mustVirsh('dumpxml', '--inactive', 'payroll');
      const uuid = l.mustVirsh('domuuid', 'payroll').trim();
      const stderr = refusedClone(pushed.replace('<name>evil</name>', '<name>payroll</name>').replace(/<uuid>[^<]*<\/uuid>/u, `<uuid>${uuid}</uuid>`), 6);
      assert.match(stderr, /\n {2}<name>: is "payroll", not evil: the definition of evil may define only evil\n/u);
      assert.match(stderr, new RegExp(`\n {2}<uuid>: ${uuid} is the UUID of payroll, defined on this host: defining it would replace payroll\n`, 'u'));
      assert.match(stderr, /To fix: .*virsh edit evil, then kss push evil/u);
      assert.equal(l.mustVirsh('dumpxml', '--inactive', 'payroll'), before, 'payroll is unchanged');

      // Its own name, payroll's UUID as libvirt reads it too: capitals, no dashes.
      const spelt = uuid.replace(/-/gu, '').toUpperCase();
      const again = refusedClone(pushed.replace(/<uuid>[^<]*<\/uuid>/u, `<uuid>${spelt}</uuid>`), 2);
      assert.match(again, new RegExp(`\n {2}<uuid>: ${spelt} is the UUID of payroll, defined on this host`, 'u'));
      assert.equal(l.mustVirsh('dumpxml', '--inactive', 'payroll'), before, 'payroll is unchanged');
    });

    it('refuses a disk outside the storage pools (next to root\'s authorized_keys) before it creates or pulls anything', (t) => {
      if (!ready(t)) return;
      const l = laptop as LibvirtHost;
      const target = '/root/.ssh/evil-disk.qcow2'; // a directory of each simulated host's own
      const stderr = refusedClone(pushed.replace(`'${evilDisk}'`, `'${target}'`), 2);
      assert.match(stderr, /\n {2}<disk> vda: \/root\/\.ssh\/evil-disk\.qcow2: outside this host's storage pools \(\/var\/lib\/libvirt\/images\)\nTo fix: kss clone evil --dir DIR puts its disks in DIR/u);
      assert.deepEqual(readdirSync(l.outside('/root/.ssh')).filter((name) => name.includes('evil')), [], 'no file created');

      const climbing = refusedClone(pushed.replace(`'${evilDisk}'`, `'${IMAGES}/../../../../root/.ssh/evil-disk.qcow2'`), 6);
      assert.match(climbing, /<disk> vda: \/var\/lib\/libvirt\/images\/\.\.\/\.\.\/\.\.\/\.\.\/root\/\.ssh\/evil-disk\.qcow2 has '\.' or '\.\.' in it/u);
      assert.deepEqual(readdirSync(l.outside('/root/.ssh')).filter((name) => name.includes('evil')), [], 'no file created');
    });

    it('refuses QEMU pass-through (<qemu:commandline>)', (t) => {
      if (!ready(t)) return;
      const xml = pushed
        .replace(/^<domain type='(\w+)'>/u, "<domain type='$1' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>")
        .replace('</domain>', "  <qemu:commandline>\n    <qemu:arg value='-chardev'/>\n    <qemu:arg value='file,id=pwn,path=/root/.ssh/authorized_keys'/>\n  </qemu:commandline>\n</domain>");
      assert.notEqual(xml, pushed);
      const stderr = refusedClone(xml, 6);
      assert.match(stderr, /\n {2}<qemu:commandline>: is QEMU pass-through \(the qemu namespace\)/u);
    });

    it('clones into --dir: two disks of one file name get names of their own; the emulator is this host\'s', async (t) => {
      if (!ready(t)) return;
      const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
      const disks = { vda: `${IMAGES}/a/disk.qcow2`, vdb: `${IMAGES}/b/disk.qcow2` };
      for (const [target, path] of Object.entries(disks)) {
        mkdirSync(d.outside(`${IMAGES}/${target === 'vda' ? 'a' : 'b'}`));
        createImage(d.outside(path), 16 * MiB);
        qemuIo(d.outside(path), `write -P ${target === 'vda' ? '0xa1' : '0xb2'} 0 1M`);
      }
      d.define('twins', tinyDomainXml('twins', disks, false));
      assert.equal(d.kss(['enable', 'twins']).status, 0);
      // As a host of another distribution would have it (this version leaves the emulator out).
      const root = (nas as SshNas).root;
      forgeHeadDefinition(root, 'twins', headDefinition(root, 'twins').replace(/<devices>/u, '<devices>\n    <emulator>/usr/libexec/qemu-kvm</emulator>'));

      const dir = '/var/lib/libvirt/clones';
      const cloned = l.kss(['clone', 'twins', '--dir', dir]);
      assert.equal(cloned.status, 0, cloned.stderr);
      assert.match(
        cloned.stdout,
        /\n {2}vda → \/var\/lib\/libvirt\/clones\/disk-vda\.qcow2\n {2}vdb → \/var\/lib\/libvirt\/clones\/disk-vdb\.qcow2\n {2}emulator \/usr\/bin\/qemu-system-x86_64 \(this host's; the NAS named \/usr\/libexec\/qemu-kvm\)\n/u,
      );
      const xml = l.mustVirsh('dumpxml', '--inactive', 'twins');
      assert.match(xml, /<emulator>\/usr\/bin\/qemu-system-x86_64<\/emulator>/u);
      assert.match(xml, /<source file='\/var\/lib\/libvirt\/clones\/disk-vda\.qcow2'\/>[\s\S]*<source file='\/var\/lib\/libvirt\/clones\/disk-vdb\.qcow2'\/>/u);
      l.mustVirsh('start', 'twins');
      l.guestIo('twins', 'read -P 0xa1 0 1M');
      l.guestIo('twins', 'read -P 0xb2 0 1M', 'virtio-disk1');
      l.mustVirsh('destroy', 'twins');
      await l.waitForStop('twins');
    });
  });

  it('names a generation as a snapshot and rolls back to it; merges the local chain (kss snapshot)', async (t) => {
    if (!ready(t)) return;
    const d = desk as LibvirtHost;
    const disks = await defineWork(d, 'snap', true);
    await d.session('snap', ['write -P 0x61 1M 1M']);
    const created = d.kss(['snapshot', 'create', 'snap', '--name', 'before-upgrade']);
    assert.equal(created.status, 0, created.stderr);
    assert.match(created.stdout, /^snap: snapshot before-upgrade = generation [0-9a-f]{12}/u);
    for (const pattern of ['0x62', '0x63', '0x64']) await d.session('snap', [`write -P ${pattern} 1M 1M`]);
    assert.match(d.kss(['snapshot', 'list', 'snap']).stdout, /nas +snapshot before-upgrade\n/u);

    const chainLength = () => JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', '-U', d.outside(disks.vda as string)], { encoding: 'utf8' })).length;
    const before = digests(d, disks);
    assert.equal(chainLength(), 6, 'top, 4 sessions, base');
    const merged = d.kss(['snapshot', 'merge', 'snap']);
    assert.equal(merged.status, 0, merged.stderr);
    assert.match(merged.stdout, /^snap: merged the chain of vda here\n$/u);
    assert.equal(chainLength(), 3, 'top, the newest layer, base');
    assert.deepEqual(digests(d, disks), before, 'the same bytes');

    d.mustVirsh('start', 'snap');
    for (const command of [['rollback', 'snap', '--to', 'before-upgrade'], ['resolve', 'snap', '--keep', 'local']]) {
      const refused = d.kss(command);
      assert.equal(refused.status, 2, `kss ${command[0]} is refused while the VM runs: ${refused.stderr}`);
      assert.match(refused.stderr, /snap is running: its disks are in use\nTo fix: shut it down first \(kss stop snap\)/u);
    }
    d.mustVirsh('destroy', 'snap');
    await d.waitForStop('snap');
    assert.deepEqual(digests(d, disks), before, 'the refusals changed nothing');
    const back = d.kss(['rollback', 'snap', '--to', 'before-upgrade']);
    assert.equal(back.status, 0, back.stderr);
    await d.session('snap', ['read -P 0x61 1M 1M', 'read -P 0x11 0 1M']);
    const deleted = d.kss(['snapshot', 'delete', 'snap', 'before-upgrade']);
    assert.equal(deleted.status, 0, deleted.stderr);
    assert.doesNotMatch(d.kss(['snapshot', 'list', 'snap']).stdout, /before-upgrade/u);
    assert.match(d.kss(['snapshot', 'delete', 'snap', 'before-upgrade']).stderr, /snap has no snapshot before-upgrade/u);
  });

  it('refuses a corrupted layer from the NAS and leaves the local VM as it was, startable', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const disks = await defineWork(d, 'rot', true);
    await defineWork(l, 'rot', false);
    await d.session('rot');
    await l.session('rot', ['write -P 0x81 8M 1M']);
    // The laptop's NAS upkeep may still publish a layer (a catch-up for the desktop): the newest file is known after it.
    for (const deadline = Date.now() + 60_000; !/NAS upkeep finished/u.test(l.hookLog('rot')) && Date.now() < deadline; ) await new Promise((resolve) => setTimeout(resolve, 200));
    const before = digests(d, disks);
    const files = readdirSync(join((nas as SshNas).root, 'domains', 'rot', 'layers')).map((name) => join((nas as SshNas).root, 'domains', 'rot', 'layers', name));
    const newest = files.sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs)[0] as string;
    chmodSync(newest, 0o644);
    const handle = openSync(newest, 'r+');
    writeSync(handle, Buffer.from('rot'), 0, 3, statSync(newest).size - 4096);
    closeSync(handle);

    const refused = d.virsh('start', 'rot');
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /is corrupt/u);
    await d.waitForStop('rot');
    assert.deepEqual(digests(d, disks), before, 'nothing local changed');
    for (const disk of Object.values(disks)) assert.deepEqual(readdirSync(d.outside(`${disk}.layers`)).filter((name) => name.includes('.part')), [], 'no partial download left');
    await d.session('rot', ['read -P 0x11 0 4M', 'read -P 0x00 8M 1M'], ['start', 'rot', '--no-sync']);
  });

  it('shows the lease holder to whoever runs virsh start elsewhere', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    await defineWork(d, 'leased', true);
    await defineWork(l, 'leased', false);
    d.mustVirsh('start', 'leased');
    const refused = l.virsh('start', 'leased');
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /Hook script execution failed.*kss: error: leased is in use on host desk since /su);
    assert.match(refused.stderr, /kss start leased --steal-lease/u);
    assert.match(l.virsh('domstate', 'leased').stdout, /shut off/u);
    await l.waitForStop('leased'); // a refused start is a stop too
    d.mustVirsh('destroy', 'leased');
    await d.waitForStop('leased');
    await l.session('leased');
  });

  it('starts with KSS_NO_SYNC=1 virsh start when the NAS is away, and refuses without it', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const disks = await defineWork(d, 'away', true);
    await d.session('away');
    await defineWork(l, 'away', false);
    await l.session('away');
    const before = digests(d, disks);

    (nas as SshNas).setLink(false);
    try {
      const refused = d.virsh('start', 'away');
      assert.notEqual(refused.status, 0);
      assert.match(refused.stderr, /the NAS cannot be reached and this host does not hold away's lease/u);
      await d.waitForStop('away'); // a refused start is a stop too
      const forced = d.inside(['virsh', '-c', 'qemu:///system', 'start', 'away'], undefined, { KSS_NO_SYNC: '1' });
      assert.equal(forced.status, 0, forced.stderr);
      assert.match(d.hookLog('away'), /asked by the client environment/u);
      d.mustVirsh('destroy', 'away');
    } finally {
      (nas as SshNas).setLink(true);
    }
    await d.waitForStop('away');
    assert.deepEqual(digests(d, disks), before);
  });

  it('gives the lease back after a start that failed after prepare', async (t) => {
    if (!ready(t)) return;
    const d = desk as LibvirtHost;
    const disks = await defineWork(d, 'broken', true);
    await d.session('broken');
    const before = digests(d, disks);
    // QEMU itself refuses this argument: the start fails after prepare has run.
    const failing = tinyDomainXml('broken', disks, true)
      .replace(/^<domain type='(\w+)'>/u, "<domain type='$1' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>")
      .replace('</domain>', "<qemu:commandline><qemu:arg value='-no-such-option'/></qemu:commandline></domain>");
    d.mustVirsh('undefine', 'broken');
    d.define('broken', failing);
    const manifestPath = join((nas as SshNas).root, 'domains', 'broken', 'manifest.json');
    const revisionBefore = JSON.parse(readFileSync(manifestPath, 'utf8')).revision as number;
    const logBefore = d.hookLog('broken').length;
    const failed = d.virsh('start', 'broken');
    assert.notEqual(failed.status, 0);
    assert.doesNotMatch(failed.stderr, /Hook script execution failed/u, 'the hook did not refuse it');
    assert.match(failed.stderr, /no-such-option/u, 'QEMU refused it');
    await d.waitForStop('broken');
    const thisStart = d.hookLog('broken').slice(logBefore);
    assert.match(thisStart, /decision=in-step/u, 'prepare ran');
    const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
    assert.equal(manifest.lease, null, 'the lease is given back');
    assert.ok(manifest.revision >= revisionBefore + 2, `the NAS recorded the lease taken and given back (revision ${revisionBefore} -> ${manifest.revision})`);
    assert.deepEqual(digests(d, disks), before);
    // The definition changed here (undefined and defined anew): the stop work takes it to the NAS, the disks had nothing.
    assert.match(thisStart.split('\n').filter((line) => line.includes('stop finished')).at(-1) ?? '', /outcome=pushed/u);
    assert.match(thisStart, /sealed .*disks=0/u);
  });

  it('keeps a running VM alive when libvirtd restarts', async (t) => {
    if (!ready(t)) return;
    const d = desk as LibvirtHost;
    await defineWork(d, 'alive', true);
    d.mustVirsh('start', 'alive');
    const pid = readFileSync(d.outside('/run/libvirtd.pid'), 'utf8').trim();
    execFileSync('kill', [pid]);
    for (let i = 0; i < 100 && existsSync(`/proc/${pid}`); i += 1) await new Promise((r) => setTimeout(r, 100));
    assert.ok(!existsSync(`/proc/${pid}`), `libvirtd (pid ${pid}) ended`);
    d.startDaemon('libvirtd');
    let state = '';
    for (let i = 0; i < 100 && !state.includes('running'); i += 1) {
      state = d.virsh('domstate', 'alive').stdout;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.match(state, /running/u);
    assert.notEqual(readFileSync(d.outside('/run/libvirtd.pid'), 'utf8').trim(), pid, 'a new libvirtd answers');
    d.guestIo('alive', 'read -P 0x11 0 4M');
    d.mustVirsh('destroy', 'alive');
    await d.waitForStop('alive');
  });

  it('leaves the disks of a managed-saved VM alone, and syncs after it is restored and stopped', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const vda = (await defineWork(d, 'saved', true)).vda as string;
    await defineWork(l, 'saved', false);
    d.mustVirsh('start', 'saved');
    d.guestIo('saved', 'write -P 0x91 8M 1M');
    const top = statSync(d.outside(vda)).ino;
    d.mustVirsh('managedsave', 'saved');
    assert.match(d.hookLog('saved'), /managed save: the disks stay as they are/u);
    assert.equal(statSync(d.outside(vda)).ino, top, 'the top is not sealed');
    d.mustVirsh('start', 'saved'); // restores the saved memory image onto the same disks
    assert.equal(statSync(d.outside(vda)).ino, top, 'nor replaced at the restore');
    assert.match(d.hookLog('saved'), /restoring a managed-save image: the next start leaves the disks as they are/u);
    d.guestIo('saved', 'read -P 0x91 8M 1M');
    d.mustVirsh('destroy', 'saved');
    await d.waitForStop('saved');
    await l.session('saved', ['read -P 0x91 8M 1M']);
  });

  it('shows the screen of a VM where it runs (kss view), and kss status says where that is', async (t) => {
    if (!ready(t)) return;
    const [d, l] = [desk as LibvirtHost, laptop as LibvirtHost];
    const withScreen = (xml: string) => xml.replace('<memballoon', "<graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'/><memballoon");
    await defineWork(d, 'seen', true, withScreen);
    await defineWork(l, 'seen', false, withScreen);
    // A viewer that tells what it was given, and asks libvirt at that URI what a real one would.
    const bin = join((pair as LibvirtPair).work, 'viewer-bin');
    const said = join((pair as LibvirtPair).work, 'viewer-said');
    mkdirSync(bin, { recursive: true });
    writeFileSync(join(bin, 'virt-viewer'), `#!/bin/sh\nprintf '%s\\n' "$@" > ${said}\nvirsh -c "$2" domstate "$4" >> ${said} 2>&1\nvirsh -c "$2" domdisplay "$4" >> ${said} 2>&1\n`);
    chmodSync(join(bin, 'virt-viewer'), 0o755);
    const viewer = { PATH: `${bin}:${CLEAN_PATH}` };
    const deskUri = `qemu+unix:///system?socket=${d.outside('/run/libvirt/libvirt-sock')}`;
    const set = l.kss(['config', 'set', `peers.desk=${deskUri}`]);
    assert.equal(set.status, 0, set.stderr);
    try {
      d.mustVirsh('start', 'seen');
      const fromLaptop = l.kss(['view', 'seen'], viewer);
      assert.equal(fromLaptop.status, 0, fromLaptop.stderr);
      assert.match(fromLaptop.stderr, /seen runs on desk: virt-viewer --connect /u);
      const seen = readFileSync(said, 'utf8').split('\n').filter((line) => line !== '');
      assert.deepEqual(seen.slice(0, 4), ['--connect', deskUri, '--reconnect', 'seen']);
      assert.equal(seen[4], 'running', `libvirt at that URI has the VM running: ${seen.join(' | ')}`);
      assert.match(seen[5] ?? '', /^vnc:\/\/127\.0\.0\.1:\d+/u);

      const fromDesk = d.kss(['view', 'seen'], viewer);
      assert.equal(fromDesk.status, 0, fromDesk.stderr);
      assert.match(fromDesk.stderr, /seen runs here: /u);
      assert.deepEqual(readFileSync(said, 'utf8').split('\n').filter((line) => line !== '').slice(0, 5), ['--connect', 'qemu:///system', '--reconnect', 'seen', 'running']);

      assert.match(l.kss(['status', 'seen']).stdout, /\n  runs on desk, which has it checked out \(kss view seen shows its screen\)\n/u);
      assert.match(d.kss(['status', 'seen']).stdout, /\n  runs here \(kss view seen shows its screen\)\n/u);
      assert.equal(JSON.parse(l.kss(['status', 'seen', '--json']).stdout)[0].runsOn, 'desk');

      const noViewer = l.kss(['view', 'seen']);
      assert.equal(noViewer.status, 4, noViewer.stderr);
      assert.match(noViewer.stderr, /apt-get install virt-viewer/u);
      const wrongPeer = l.kss(['config', 'set', `peers.desk=qemu+unix:///system?socket=${d.outside('/run/libvirt/nothing-here')}`]);
      assert.equal(wrongPeer.status, 0, wrongPeer.stderr);
      const unreachable = l.kss(['view', 'seen'], viewer);
      assert.equal(unreachable.status, 4, unreachable.stderr);
      assert.match(unreachable.stderr, /libvirt on desk did not answer at qemu\+unix:.*nothing-here/u);
      assert.match(unreachable.stderr, /kss config set peers\.desk=URI/u);
    } finally {
      l.kss(['config', 'set', 'peers.desk=']);
      d.virsh('destroy', 'seen');
    }
    await d.waitForStop('seen');
    const nowhere = l.kss(['view', 'seen'], viewer);
    assert.equal(nowhere.status, 2, nowhere.stderr);
    assert.match(nowhere.stderr, /seen runs nowhere.*\n.*kss start seen starts it here/u);
    assert.match(l.kss(['status', 'seen']).stdout, /\n  runs nowhere \(no host has it checked out\)\n/u);
  });

  it('leaves an unmanaged domain alone', async (t) => {
    if (!ready(t)) return;
    const d = desk as LibvirtHost;
    const disk = `${IMAGES}/plain.qcow2`;
    createImage(d.outside(disk), 16 * MiB);
    const inode = statSync(d.outside(disk)).ino;
    d.define('plain', tinyDomainXml('plain', { vda: disk }, false));
    d.mustVirsh('start', 'plain');
    d.guestIo('plain', 'write -P 0x01 0 1M');
    d.mustVirsh('destroy', 'plain');
    assert.equal(statSync(d.outside(disk)).ino, inode);
    assert.ok(!existsSync(`${d.outside(disk)}.layers`));
    assert.equal(d.hookLog('plain'), '');
  });
});
