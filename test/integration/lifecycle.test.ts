// The hook lifecycle, hook call by hook call as libvirt makes them, on two simulated
// hosts sharing one NAS: every scenario asserts the bytes a guest would read.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import { nasPaths, type Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { hasFlag, setFlag } from '../../lib/sync/local-state.js';
import { prepareStart } from '../../lib/sync/start.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { TestHost, managedDomainXml } from '../helpers/hosts.js';
import { requireTools } from '../helpers/tools.js';

let root: string;
let nas: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-life-'));
  nas = join(root, 'nas');
  mkdirSync(nas);
});
after(() => rmSync(root, { recursive: true, force: true }));

function manifestOf(domain: string): Promise<Manifest | undefined> {
  return new NasRepository(new DirTransport({ root: nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'test' }).readManifest(domain);
}

/** A domain on two hosts, enabled on the desktop with two disks holding patterns. */
async function twoHosts(t: TestContext, domain: string) {
  if (!requireTools(t, 'qemu-img', 'qemu-io')) return undefined;
  const desk = new TestHost('desk', join(root, `${domain}-desk`), nas);
  const laptop = new TestHost('laptop', join(root, `${domain}-laptop`), nas);
  const deskDisks = { vda: desk.disk(`${domain} root.qcow2`), vdb: desk.disk(`${domain}-home.qcow2`) };
  const laptopDisks = { vda: laptop.disk(`${domain} root.qcow2`), vdb: laptop.disk(`${domain}-home.qcow2`) };
  createImage(deskDisks.vda, 32 * MiB);
  createImage(deskDisks.vdb, 32 * MiB);
  qemuIo(deskDisks.vda, 'write -P 0x11 0 4M');
  qemuIo(deskDisks.vdb, 'write -P 0x22 1M 4M');
  await enableDisks(domain, deskDisks, { config: await desk.config(), log: desk.quietLog() });
  const deskXml = managedDomainXml(domain, deskDisks);
  const laptopXml = managedDomainXml(domain, laptopDisks);
  /** A session without guest writes on one host: start, stop, and the stop work finished. */
  const cycle = async (host: TestHost) => {
    const xml = host === desk ? deskXml : laptopXml;
    ok(host.call(domain, 'prepare', 'begin', xml), `${host.name} start`);
    ok(host.call(domain, 'release', 'end', xml), `${host.name} stop`);
    await host.waitForStop(domain);
  };
  return { desk, laptop, deskDisks, laptopDisks, deskXml, laptopXml, cycle };
}

function ok(run: { status: number | null; stderr: string; stdout: string }, what: string): void {
  assert.equal(run.status, 0, `${what}: ${run.stderr}`);
  assert.equal(run.stdout, '', `${what} wrote to stdout`);
}

describe('lifecycle on two hosts (hook calls as libvirt makes them)', () => {
  it('moves a two-disk VM desktop -> laptop -> desktop, every byte', async (t) => {
    const s = await twoHosts(t, 'work');
    if (!s) return;
    const { desk, laptop, deskDisks, laptopDisks } = s;

    ok(desk.call('work', 'prepare', 'begin', s.deskXml), 'desk start (first push)');
    let manifest = (await manifestOf('work')) as Manifest;
    assert.equal(manifest.lease?.host, 'desk');
    assert.equal(Object.keys(manifest.generations).length, 1);

    qemuIo(deskDisks.vda, 'write -P 0x33 2M 1M');
    qemuIo(deskDisks.vdb, 'write -z 2M 64k');
    const day1 = { vda: guestDigest(deskDisks.vda), vdb: guestDigest(deskDisks.vdb) };
    ok(desk.call('work', 'release', 'end', s.deskXml), 'desk stop');
    await desk.waitForStop('work');
    manifest = (await manifestOf('work')) as Manifest;
    assert.equal(manifest.lease, null, 'the lease is given back');
    assert.equal(Object.keys(manifest.generations).length, 2);
    assert.deepEqual((await desk.state('work')).pending, []);

    ok(laptop.call('work', 'prepare', 'begin', s.laptopXml), 'laptop start (pull)');
    assert.deepEqual({ vda: guestDigest(laptopDisks.vda), vdb: guestDigest(laptopDisks.vdb) }, day1, 'the laptop sees the desktop day');
    assert.equal(((await manifestOf('work')) as Manifest).lease?.host, 'laptop');

    qemuIo(laptopDisks.vdb, 'write -P 0x44 8M 2M');
    const day2 = { vda: guestDigest(laptopDisks.vda), vdb: guestDigest(laptopDisks.vdb) };
    ok(laptop.call('work', 'release', 'end', s.laptopXml), 'laptop stop');
    await laptop.waitForStop('work');

    ok(desk.call('work', 'prepare', 'begin', s.deskXml), 'desk start (pull)');
    assert.deepEqual({ vda: guestDigest(deskDisks.vda), vdb: guestDigest(deskDisks.vdb) }, day2, 'and the desktop the laptop day');
    qemuIo(deskDisks.vdb, 'read -P 0x44 8M 2M', 'read -P 0 2M 64k', 'read -P 0x22 1M 1M');
  });

  it('keeps each host\'s chain within maxChainDepth, every byte and every generation still there', async (t) => {
    if (!requireTools(t, 'qemu-img', 'qemu-io')) return;
    const max = 4;
    const desk = new TestHost('desk', join(root, 'deep-desk'), nas, { maxChainDepth: max });
    const laptop = new TestHost('laptop', join(root, 'deep-laptop'), nas, { maxChainDepth: max });
    const deskDisks = { vda: desk.disk('deep.qcow2') };
    const laptopDisks = { vda: laptop.disk('deep.qcow2') };
    createImage(deskDisks.vda, 32 * MiB);
    qemuIo(deskDisks.vda, 'write -P 0x11 0 8M');
    await enableDisks('deep', deskDisks, { config: await desk.config(), log: desk.quietLog() });
    const [deskXml, laptopXml] = [managedDomainXml('deep', deskDisks), managedDomainXml('deep', laptopDisks)];
    const depth = (disk: string) => JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', '-U', disk], { encoding: 'utf8' })).length - 1;

    // Ten sessions on the desktop, each writing its own pattern over part of the last one.
    const digests: string[] = [];
    for (let day = 1; day <= 10; day += 1) {
      ok(desk.call('deep', 'prepare', 'begin', deskXml), `desk start ${day}`);
      qemuIo(deskDisks.vda, `write -P ${0x20 + day} ${day}M 2M`);
      digests.push(guestDigest(deskDisks.vda));
      ok(desk.call('deep', 'release', 'end', deskXml), `desk stop ${day}`);
      await desk.waitForStop('deep');
      assert.equal(guestDigest(deskDisks.vda), digests.at(-1), `day ${day}: compaction keeps every byte`);
      assert.ok(depth(deskDisks.vda) <= max, `day ${day}: the desktop's chain has ${depth(deskDisks.vda)} layers`);
    }
    assert.match(desk.log('deep'), /compacted the local chain/u);
    assert.ok(Object.keys((await desk.state('deep')).compacted ?? {}).length > 0);

    // The laptop pulls the whole history (the NAS keeps every layer as pushed) ...
    ok(laptop.call('deep', 'prepare', 'begin', laptopXml), 'laptop start');
    assert.equal(guestDigest(laptopDisks.vda), digests.at(-1));
    assert.equal(depth(laptopDisks.vda), 11, 'the base and ten days under the top');
    ok(laptop.call('deep', 'release', 'end', laptopXml), 'laptop stop');
    await laptop.waitForStop('deep');
    assert.ok(depth(laptopDisks.vda) <= max, `and compacts its own copy (${depth(laptopDisks.vda)} layers)`);
    assert.equal(guestDigest(laptopDisks.vda), digests.at(-1));

    // ... and old generations stay restorable on a compacted host.
    const manifest = (await manifestOf('deep')) as Manifest;
    const third = Object.values(manifest.generations).sort((a, b) => a.created.localeCompare(b.created))[3];
    const back = laptop.kss('rollback', 'deep', '--to', (third as { id: string }).id.slice(0, 16));
    assert.equal(back.status, 0, back.stderr);
    assert.equal(guestDigest(laptopDisks.vda), digests[2], 'the disk as at day 3');

    // The desktop's next start pulls the rollback onto its compacted chain.
    ok(desk.call('deep', 'prepare', 'begin', deskXml), 'desk start after the rollback');
    assert.equal(guestDigest(deskDisks.vda), digests[2]);
  });

  it('tells where the VM stands (kss status) and when it is safe to switch hosts (kss wait)', async (t) => {
    const s = await twoHosts(t, 'told');
    if (!s) return;
    const { desk, laptop, deskDisks, laptopDisks } = s;
    const status = (h: TestHost) => JSON.parse(h.kss('status', 'told', '--json').stdout)[0];
    const wait = (h: TestHost) => h.kss('wait', 'told', '--timeout', '60');

    assert.equal(status(desk).state, 'ahead', 'enabled, not published yet');
    assert.equal(wait(desk).status, 5);
    ok(desk.call('told', 'prepare', 'begin', s.deskXml), 'desk start');
    // The hook-only host's virsh stand-in says "running" as libvirt would once the start is through.
    assert.match(desk.kssIn({ KSS_TEST_DOMSTATE: 'running' }, 'status').stdout, /^told: synced; checked out here\n  runs here \(kss view told shows its screen\)\n  here [0-9a-f]{12}, NAS [0-9a-f]{12}; layers: vda 1, vdb 1.*\n  to push 0 B, to pull 0 B\n  uses \d+\.\d [KM]iB here, \d+\.\d [KM]iB on the NAS\n$/u);
    const running = wait(desk);
    assert.equal(running.status, 11, running.stderr);
    assert.match(running.stderr, /checked out here/u);
    assert.equal(status(laptop).state, 'behind');
    assert.match(laptop.kss('status', 'told').stdout, /behind \(the NAS is newer\); checked out by desk since .*\n  runs on desk, which has it checked out/u);

    qemuIo(deskDisks.vda, 'write -P 0x61 1M 1M');
    ok(desk.call('told', 'release', 'end', s.deskXml), 'desk stop');
    const done = wait(desk); // waits for the background push
    assert.equal(done.status, 0, done.stderr);
    assert.match(done.stdout, /^told: synced\n$/u);
    assert.deepEqual(status(desk).layers, { vda: 2, vdb: 1 });

    // A conflict: the laptop worked offline while the desktop pushed.
    await s.cycle(laptop);
    await setFlag((await laptop.config()).stateDir, 'told', 'skip-sync');
    ok(laptop.call('told', 'prepare', 'begin', s.laptopXml), 'laptop start offline');
    qemuIo(laptopDisks.vdb, 'write -P 0x62 1M 1M');
    ok(desk.call('told', 'prepare', 'begin', s.deskXml), 'desk start');
    qemuIo(deskDisks.vdb, 'write -P 0x63 1M 1M');
    ok(desk.call('told', 'release', 'end', s.deskXml), 'desk stop');
    assert.equal(wait(desk).status, 0);
    ok(laptop.call('told', 'release', 'end', s.laptopXml), 'laptop stop');
    const conflict = wait(laptop);
    assert.equal(conflict.status, 9, conflict.stderr);
    assert.match(conflict.stderr, /kss resolve told --keep local\|remote/u);
    assert.equal(status(laptop).state, 'conflict');
    assert.deepEqual([status(laptop).delta.push.layers, status(laptop).delta.pull.layers], [1, 1], "the laptop's session one way, the desktop's the other");
  });

  it('consumes the one-shot flags of a start even when the client environment asks the same', async (t) => {
    const s = await twoHosts(t, 'once');
    if (!s) return;
    const config = await s.desk.config();
    await setFlag(config.stateDir, 'once', 'skip-sync');
    await setFlag(config.stateDir, 'once', 'steal-lease');
    const repository = () => new NasRepository(new DirTransport({ root: nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'desk' });
    await prepareStart('once', s.deskDisks, {
      config,
      log: s.desk.quietLog(),
      openRepository: repository,
      clientEnvironment: async () => ({ skipSync: true, stealLease: true, note: 'as a local KSS_NO_SYNC=1 virsh start would' }),
    });
    assert.equal(await hasFlag(config.stateDir, 'once', 'skip-sync'), false, 'the flag does not wait for a later start');
    assert.equal(await hasFlag(config.stateDir, 'once', 'steal-lease'), false);
    assert.equal(await manifestOf('once'), undefined, 'and the NAS was not asked');
  });

  it('refuses a start while another host has the VM, and names it', async (t) => {
    const s = await twoHosts(t, 'leased');
    if (!s) return;
    ok(s.desk.call('leased', 'prepare', 'begin', s.deskXml), 'desk start');
    const refused = s.laptop.call('leased', 'prepare', 'begin', s.laptopXml);
    assert.equal(refused.status, 11);
    assert.equal(refused.stdout, '');
    assert.match(refused.stderr, /^kss: error: leased is in use on host desk since \d{4}-\d\d-\d\dT[\d:.]+Z\.\nTo fix: .*kss start leased --steal-lease\n$/u);

    await setFlag((await s.laptop.config()).stateDir, 'leased', 'steal-lease');
    ok(s.laptop.call('leased', 'prepare', 'begin', s.laptopXml), 'laptop steals the lease');
    assert.equal(((await manifestOf('leased')) as Manifest).lease?.host, 'laptop');
    assert.match(s.laptop.log('leased'), /taking the lease from another host, as asked/);
  });

  it('refuses a start when both sides changed, keeping both', async (t) => {
    const s = await twoHosts(t, 'forked');
    if (!s) return;
    const { desk, laptop, deskDisks, laptopDisks } = s;
    ok(desk.call('forked', 'prepare', 'begin', s.deskXml), 'desk start');
    qemuIo(deskDisks.vda, 'write -P 0xd1 0 1M');
    const deskDay = guestDigest(deskDisks.vda);
    await setFlag((await desk.config()).stateDir, 'forked', 'no-push');
    ok(desk.call('forked', 'release', 'end', s.deskXml), 'desk stop --no-push');
    await desk.waitForStop('forked');
    assert.equal((await desk.state('forked')).pending.length, 1, 'the desktop keeps its day');

    await setFlag((await laptop.config()).stateDir, 'forked', 'steal-lease');
    ok(laptop.call('forked', 'prepare', 'begin', s.laptopXml), 'laptop takes over');
    qemuIo(laptopDisks.vda, 'write -P 0xa1 0 1M');
    ok(laptop.call('forked', 'release', 'end', s.laptopXml), 'laptop stop');
    await laptop.waitForStop('forked');

    const refused = desk.call('forked', 'prepare', 'begin', s.deskXml);
    assert.equal(refused.status, 9, refused.stderr);
    assert.match(refused.stderr, /forked changed both here and on the NAS: this host has 1 unsynced generation\(s\) since generation [0-9a-f]{12}, and the NAS now has [0-9a-f]{12} from host laptop at /u);
    assert.match(refused.stderr, /To fix: keep one side \(the other is kept as a branch\): kss resolve forked --keep local, or kss resolve forked --keep remote/u);
    assert.equal(guestDigest(deskDisks.vda), deskDay, 'the desktop day is untouched');
  });

  for (const keep of ['remote', 'local'] as const) {
    it(`resolves a conflict keeping the ${keep} side, and the other side stays restorable`, async (t) => {
      const s = await twoHosts(t, `fork-${keep}`);
      if (!s) return;
      const { desk, laptop, deskDisks, laptopDisks } = s;
      const domain = `fork-${keep}`;
      ok(desk.call(domain, 'prepare', 'begin', s.deskXml), 'desk start');
      qemuIo(deskDisks.vda, 'write -P 0xd1 0 1M');
      const deskDay = guestDigest(deskDisks.vda);
      await setFlag((await desk.config()).stateDir, domain, 'no-push');
      ok(desk.call(domain, 'release', 'end', s.deskXml), 'desk stop --no-push');
      await desk.waitForStop(domain);
      await setFlag((await laptop.config()).stateDir, domain, 'steal-lease');
      ok(laptop.call(domain, 'prepare', 'begin', s.laptopXml), 'laptop takes over');
      qemuIo(laptopDisks.vda, 'write -P 0xa1 0 1M');
      const laptopDay = guestDigest(laptopDisks.vda);
      ok(laptop.call(domain, 'release', 'end', s.laptopXml), 'laptop stop');
      await laptop.waitForStop(domain);
      assert.equal(desk.call(domain, 'prepare', 'begin', s.deskXml).status, 9, 'the conflict is refused');

      const resolved = desk.kss('resolve', domain, '--keep', keep);
      assert.equal(resolved.status, 0, resolved.stderr);
      const branch = (/the other side is branch (\S+)/u.exec(resolved.stdout) as RegExpExecArray)[1] as string;
      const [winner, loser] = keep === 'remote' ? [laptopDay, deskDay] : [deskDay, laptopDay];
      assert.equal(guestDigest(deskDisks.vda), winner, `the desktop holds the ${keep} side`);
      ok(desk.call(domain, 'prepare', 'begin', s.deskXml), 'and starts');
      ok(desk.call(domain, 'release', 'end', s.deskXml), 'desk stop');
      await desk.waitForStop(domain);
      ok(laptop.call(domain, 'prepare', 'begin', s.laptopXml), 'laptop start');
      assert.equal(guestDigest(laptopDisks.vda), winner, 'the laptop gets the same');
      ok(laptop.call(domain, 'release', 'end', s.laptopXml), 'laptop stop');
      await laptop.waitForStop(domain);

      const listed = desk.kss('snapshot', 'list', domain, '--json');
      assert.equal(listed.status, 0, listed.stderr);
      const rows = JSON.parse(listed.stdout) as Array<{ marks: string[] }>;
      assert.ok(rows.some((row) => row.marks.includes(`branch ${branch}`)), 'the losing side is listed as a branch');
      const back = desk.kss('rollback', domain, '--to', branch);
      assert.equal(back.status, 0, back.stderr);
      assert.equal(guestDigest(deskDisks.vda), loser, 'and restorable by rollback');
      const dry = desk.kss('gc', domain, '--dry-run');
      assert.equal(dry.status, 0, dry.stderr);
      assert.match(dry.stdout, new RegExp(`^${domain}: would remove 0 generation\\(s\\), 0 branch\\(es\\), 0 layer file\\(s\\); nothing was changed\\n$`, 'u'));
      const gc = desk.kss('gc', domain);
      assert.equal(gc.status, 0, gc.stderr);
      assert.match(gc.stdout, new RegExp(`^${domain}: removed 0 generation\\(s\\), 0 branch\\(es\\), 0 layer file\\(s\\)\\n$`, 'u'), 'young history is all kept');
    });
  }

  it('starts offline only where that cannot fork the VM, or when told to', async (t) => {
    const s = await twoHosts(t, 'offline');
    if (!s) return;
    const { desk, laptop } = s;
    await s.cycle(desk);
    await s.cycle(laptop);

    renameSync(nas, `${nas}.away`);
    try {
      const refused = desk.call('offline', 'prepare', 'begin', s.deskXml);
      assert.equal(refused.status, 8, refused.stderr);
      assert.match(refused.stderr, /the NAS cannot be reached and this host does not hold offline's lease: starting now could fork it without anyone noticing\. \(the NAS directory .* does not exist\)\nTo fix: start it without syncing on purpose: kss start offline --no-sync/u);
      await setFlag((await desk.config()).stateDir, 'offline', 'skip-sync');
      ok(desk.call('offline', 'prepare', 'begin', s.deskXml), 'desk start --no-sync');
      assert.match(desk.log('offline'), /started without syncing, as asked/);
    } finally {
      renameSync(`${nas}.away`, nas);
    }
  });

  it('refuses a corrupted layer and leaves the local VM startable as it was', async (t) => {
    const s = await twoHosts(t, 'damaged');
    if (!s) return;
    const { desk, laptop, deskDisks, laptopDisks } = s;
    await s.cycle(desk);
    await s.cycle(laptop);
    const before = guestDigest(laptopDisks.vda);

    ok(desk.call('damaged', 'prepare', 'begin', s.deskXml), 'desk start');
    qemuIo(deskDisks.vda, 'write -P 0x5e 0 2M');
    ok(desk.call('damaged', 'release', 'end', s.deskXml), 'desk stop');
    await desk.waitForStop('damaged');
    const manifest = (await manifestOf('damaged')) as Manifest;
    const newest = manifest.generations[manifest.head as string]?.disks.vda as string;
    const file = join(nas, nasPaths.layer('damaged', newest));
    chmodSync(file, 0o644);
    const bytes = readFileSync(file);
    bytes[bytes.length - 100] = (bytes[bytes.length - 100] as number) ^ 0xff;
    writeFileSync(file, bytes);

    const refused = laptop.call('damaged', 'prepare', 'begin', s.laptopXml);
    assert.equal(refused.status, 6, refused.stderr);
    assert.match(refused.stderr, /is corrupt/);
    assert.equal(guestDigest(laptopDisks.vda), before, 'the laptop disk is as it was');
    assert.ok(!existsSync(join(`${laptopDisks.vda}.layers`, `${newest}.qcow2`)), 'the bad layer is not kept');
    await setFlag((await laptop.config()).stateDir, 'damaged', 'skip-sync');
    ok(laptop.call('damaged', 'prepare', 'begin', s.laptopXml), 'and it starts without the NAS');
    assert.equal(guestDigest(laptopDisks.vda), before);
  });
});
