// Checkpoints while the VM runs, end to end: two real libvirtd, the hook as built, a
// real sshd NAS. The session's writes reach the NAS as checkpoint generations while the
// guest runs; the stop then pushes only what came after the last one; the other host
// gets every byte.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { readConfig } from '../../lib/config.js';
import type { Manifest } from '../../lib/nas/format.js';
import { Logger } from '../../lib/log.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { startLibvirtPair, type LibvirtPair } from '../helpers/libvirt-pair.js';
import { SSH_NAS_TOOLS } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const IMAGES = '/var/lib/libvirt/images';
let pair: LibvirtPair | undefined;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS, 'qemu-storage-daemon')) return;
  pair = await startLibvirtPair('kss-checkpoints-');
  for (const host of [pair.desk, pair.laptop]) setConfig(host, { checkpointSeconds: 2, checkpointBytes: 0 });
});
after(() => pair?.stop());

function setConfig(host: LibvirtHost, values: Record<string, unknown>): void {
  const file = host.outside('/etc/kvm-snapshot-sync/config.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...values }, null, 2));
}

async function defineWork(host: LibvirtHost, domain: string, enable: boolean): Promise<Record<string, string>> {
  const disks = { vda: `${IMAGES}/${domain}-root.qcow2`, vdb: `${IMAGES}/${domain}-home.qcow2` };
  if (enable) {
    createImage(host.outside(disks.vda), 64 * MiB);
    createImage(host.outside(disks.vdb), 64 * MiB);
    qemuIo(host.outside(disks.vda), 'write -P 0x11 0 4M');
    const config = { ...(await readConfig(host.outside('/etc/kvm-snapshot-sync/config.json'))), stateDir: host.outside('/var/lib/kvm-snapshot-sync') };
    await enableDisks(domain, { vda: host.outside(disks.vda), vdb: host.outside(disks.vdb) }, { config, log: new Logger([]) });
  }
  host.define(domain, tinyDomainXml(domain, disks, true));
  return disks;
}

function manifest(domain: string): Manifest {
  return JSON.parse(readFileSync(join((pair as LibvirtPair).nas.root, 'domains', domain, 'manifest.json'), 'utf8')) as Manifest;
}

async function until(what: string, check: () => boolean, timeoutMs = 90_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !check(); ) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** The bytes of each layer pushed, from the hook's log. */
function pushedLayers(log: string): number[] {
  return [...log.matchAll(/ pushing layer .* bytes=(\d+)/gu)].map((match) => Number(match[1]));
}

/** The bytes of the first checkpoint pushed, and the seconds from its first layer's push to its publication (the log's times). */
function firstCheckpointPush(log: string): { bytes: number; seconds: number } {
  const lines = log.split('\n');
  const done = lines.findIndex((line) => / checkpoint pushed /u.test(line));
  const first = lines.findIndex((line, index) => index > lines.findIndex((l) => / checkpoints begin /u.test(l)) && / pushing layer /u.test(line));
  assert.ok(first >= 0 && done > first, `a checkpoint pushed layers:\n${log}`);
  const time = (line: string) => Date.parse(line.split(' ')[0] as string);
  const bytes = pushedLayers(lines.slice(first, done).join('\n')).reduce((sum, size) => sum + size, 0);
  return { bytes, seconds: (time(lines[done] as string) - time(lines[first] as string)) / 1000 };
}

/** The desktop's local state of the domain. */
function pendingHere(host: LibvirtHost, domain: string): number {
  return (JSON.parse(readFileSync(host.outside(`/var/lib/kvm-snapshot-sync/domains/${domain}/state.json`), 'utf8')) as { pending: unknown[] }).pending.length;
}

describe('checkpoints while the VM runs', () => {
  it('pushes the running session as checkpoints, then only the rest at the stop; the other host gets every byte', async (t) => {
    if (!pair) return t.skip('no libvirt');
    const { desk, laptop } = pair;
    const disks = await defineWork(desk, 'ck', true);
    await defineWork(laptop, 'ck', false);

    setConfig(desk, { checkpointRateMBps: 4 }); // read by the checkpoint process as it starts
    t.after(() => setConfig(desk, { checkpointRateMBps: 0 }));
    desk.mustVirsh('start', 'ck');
    desk.guestIo('ck', 'write -P 0x5a 16M 8M');
    desk.guestIo('ck', 'write -P 0x6b 1M 4M', 'virtio-disk1');
    const before = manifest('ck').head;
    await until('a checkpoint on the NAS', () => {
      const m = manifest('ck');
      return m.head !== before && m.generations[m.head as string]?.checkpoint === true && /checkpoint pushed/u.test(desk.hookLog('ck'));
    });
    const checkpoint = manifest('ck');
    assert.equal(checkpoint.lease?.host, 'desk', 'the lease stays with the running host');
    assert.match(desk.mustVirsh('domstate', 'ck'), /running/u, 'the guest runs on');
    desk.guestIo('ck', 'read -P 0x5a 16M 8M');
    const capped = firstCheckpointPush(desk.hookLog('ck'));
    assert.ok(capped.bytes > 12 * MiB && capped.seconds >= (capped.bytes / 4e6) * 0.95, `the checkpoint's push kept to checkpointRateMBps: ${capped.bytes} bytes in ${capped.seconds} s`);

    // Once a checkpoint found nothing new and every one is pushed, the NAS has all of it; the stop pushes only what comes after.
    await until('a checkpoint with nothing new, all pushed', () => / checkpoint domain=ck .*layers=0/u.test(desk.hookLog('ck')) && pendingHere(desk, 'ck') === 0);
    const status = laptop.kss(['status', 'ck']);
    assert.match(status.stdout, /the NAS has a checkpoint of the VM running on desk, (less than a minute|\d+ minutes?) old .*: what a power cut then would have left/u, status.stdout + status.stderr);
    const logBefore = desk.hookLog('ck').length;
    desk.guestIo('ck', 'write -P 0x7c 40M 1M');


    desk.mustVirsh('destroy', 'ck');
    await desk.waitForStop('ck');
    const stopLog = desk.hookLog('ck').slice(logBefore);
    assert.match(stopLog, /stop finished.*pushed/u);
    const stopBytes = pushedLayers(stopLog);
    assert.ok(stopBytes.length > 0 && stopBytes.every((bytes) => bytes < 3 * MiB), `the stop pushed only what came after the last checkpoint: ${stopBytes.join(', ')} bytes`);
    const final = manifest('ck');
    assert.notEqual(final.generations[final.head as string]?.checkpoint, true, 'the stop publishes a generation of its own');
    const whole = Object.fromEntries(Object.entries(disks).map(([target, path]) => [target, guestDigest(desk.outside(path))]));

    laptop.mustVirsh('start', 'ck');
    laptop.guestIo('ck', 'read -P 0x5a 16M 8M');
    laptop.guestIo('ck', 'read -P 0x7c 40M 1M');
    laptop.guestIo('ck', 'read -P 0x6b 1M 4M', 'virtio-disk1');
    laptop.mustVirsh('destroy', 'ck');
    await laptop.waitForStop('ck');
    const there = Object.fromEntries(Object.entries(disks).map(([target, path]) => [target, guestDigest(laptop.outside(path))]));
    assert.deepEqual(there, whole, 'the laptop holds every byte the desktop wrote');
    assert.equal(desk.mustVirsh('checkpoint-list', 'ck', '--name').trim(), '', 'no checkpoint metadata is left in libvirt');
  });

  it('lets another host take the VM as the last checkpoint left it, when the host that runs it is cut off', async (t) => {
    if (!pair) return t.skip('no libvirt');
    const { desk, laptop } = pair;
    await defineWork(desk, 'st', true);
    await defineWork(laptop, 'st', false);
    desk.mustVirsh('start', 'st');
    desk.guestIo('st', 'write -P 0x5a 16M 8M');
    await until('a checkpoint with nothing new, all pushed', () => / checkpoint domain=st .*layers=0/u.test(desk.hookLog('st')) && pendingHere(desk, 'st') === 0);
    desk.guestIo('st', 'write -P 0x7c 40M 1M'); // after the last checkpoint the laptop will see

    // The desktop is cut off (it runs on): the person takes the VM on the laptop.
    const stolen = laptop.kss(['start', 'st', '--steal-lease']);
    assert.equal(stolen.status, 0, stolen.stderr);
    laptop.guestIo('st', 'read -P 0x5a 16M 8M');
    laptop.guestIo('st', 'read -P 0 40M 1M');
    await until('the desktop to stop its checkpoints', () => /another host took the VM: no more checkpoints here/u.test(desk.hookLog('st')));
    assert.equal(manifest('st').lease?.host, 'laptop', 'no checkpoint of the desktop is published over the laptop\'s lease');
    laptop.guestIo('st', 'write -P 0x3d 44M 1M');
    laptop.mustVirsh('destroy', 'st');
    await laptop.waitForStop('st');

    // The desktop comes back: its session since the checkpoint is kept, as a conflict for the person to resolve.
    desk.mustVirsh('destroy', 'st');
    await desk.waitForStop('st');
    assert.match(desk.hookLog('st'), /stop finished .*outcome="kept here \(conflict/u);
    const refused = desk.virsh('start', 'st');
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /kss resolve st --keep local, or kss resolve st --keep remote/u);
    await desk.waitForStop('st');
  });

  it('loses nothing when the checkpoint process is killed at any step: the guest runs on, and the stop pushes every byte', async (t) => {
    if (!pair) return t.skip('no libvirt');
    const { desk, laptop } = pair;
    // The hook's own checkpoint process waits a day: the test runs its own, and kills it.
    setConfig(desk, { checkpointSeconds: 86_400 });
    t.after(() => setConfig(desk, { checkpointSeconds: 2 }));
    await defineWork(desk, 'kc', true);
    await defineWork(laptop, 'kc', false);
    desk.mustVirsh('start', 'kc');
    const session = (JSON.parse(readFileSync(desk.outside('/var/lib/kvm-snapshot-sync/domains/kc/state.json'), 'utf8')) as { checkpoints: { id: string } }).checkpoints.id;
    // One checkpoint process per domain: the hook's goes (killed, as the test's will be: its lock is left to go stale).
    await until("the hook's checkpoint process", () => /checkpoints begin domain=kc/u.test(desk.hookLog('kc')));
    process.kill(Number(/checkpoints in the background domain=kc .*worker=(\d+)/u.exec(desk.hookLog('kc'))?.[1]), 'SIGKILL');
    const written: Array<{ drive: string; io: string }> = [];
    const steps = ['checkpoint:files', 'checkpoint:freeze', 'checkpoint:seal', 'checkpoint:record', 'checkpoint:drop', 'checkpoint:push', 'checkpoint:files#2', 'checkpoint:publish'];
    for (const [i, step] of steps.entries()) {
      const pattern = `0x${(0x20 + i).toString(16)}`;
      desk.guestIo('kc', `write -P ${pattern} ${8 + 2 * i}M 1M`);
      desk.guestIo('kc', `write -P ${pattern} ${i}M 1M`, 'virtio-disk1');
      written.push({ drive: 'virtio-disk0', io: `read -P ${pattern} ${8 + 2 * i}M 1M` }, { drive: 'virtio-disk1', io: `read -P ${pattern} ${i}M 1M` });
      const child = desk.spawnInside([process.execPath, '--import', join(process.cwd(), 'node_modules/tsx/dist/loader.mjs'), join(process.cwd(), 'test/helpers/checkpoint-child.ts'), 'kc', session, step], { CHECKPOINT_SECONDS: '1' });
      let said = '';
      child.stderr.setEncoding('utf8').on('data', (text: string) => (said += text));
      const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
      const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('close', (_code, sig) => resolve(sig)));
      clearTimeout(timer);
      assert.equal(signal, 'SIGKILL', `killed at ${step}:\n${said}`);
      assert.match(said, new RegExp(`step ${step.split('#')[0]}\n$`, 'u'), `it reached ${step} and went no further`);
      assert.match(desk.mustVirsh('domstate', 'kc'), /running/u, `killed at ${step}: the guest runs on`);
      for (const { drive, io } of written) desk.guestIo('kc', io, drive);
    }
    assert.equal(manifest('kc').generations[manifest('kc').head as string]?.checkpoint, true, 'the round that was not killed published a checkpoint');
    desk.guestIo('kc', 'write -P 0x7e 50M 1M');
    written.push({ drive: 'virtio-disk0', io: 'read -P 0x7e 50M 1M' });
    const logBefore = desk.hookLog('kc').length;
    desk.mustVirsh('destroy', 'kc');
    await desk.waitForStop('kc');
    const stopLog = desk.hookLog('kc').slice(logBefore);
    assert.match(stopLog, /stop finished .*outcome=pushed/u);
    // Killed before it published, the last checkpoint's layers were on the NAS: the stop sends them not again.
    assert.equal((stopLog.match(/ pushed layer .*alreadyThere=true/gu) ?? []).length, 2, `the last checkpoint's layers, one per disk, were on the NAS already:\n${stopLog}`);

    laptop.mustVirsh('start', 'kc');
    for (const { drive, io } of written) laptop.guestIo('kc', io, drive);
    laptop.mustVirsh('destroy', 'kc');
    await laptop.waitForStop('kc');
  });
});
