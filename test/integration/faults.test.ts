// Fault injection: the start and the stop work are killed with SIGKILL just before
// each of their named steps; the next normal run must recover, with every byte the
// guest wrote, and the NAS must never name a missing or partial layer.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import { nasPaths, type Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { setFlag } from '../../lib/sync/local-state.js';
import { MiB, createImage, guestDigest, qemuIo, qemuIoAs } from '../helpers/disks.js';
import { TestHost, managedDomainXml } from '../helpers/hosts.js';
import { requireTools } from '../helpers/tools.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-faults-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

let count = 0;

/** Two hosts and a NAS; the desktop has the domain enabled, with a pattern on each disk. */
async function world(t: TestContext, config: Record<string, unknown> = {}) {
  if (!requireTools(t, 'qemu-img', 'qemu-io')) return undefined;
  count += 1;
  const base = join(root, `w${count}`);
  const nas = join(base, 'nas');
  mkdirSync(nas, { recursive: true });
  const desk = new TestHost('desk', join(base, 'desk'), nas, config);
  const laptop = new TestHost('laptop', join(base, 'laptop'), nas, config);
  const deskDisks = { vda: desk.disk('vm.qcow2'), vdb: desk.disk('vm-home.qcow2') };
  const laptopDisks = { vda: laptop.disk('vm.qcow2'), vdb: laptop.disk('vm-home.qcow2') };
  createImage(deskDisks.vda, 16 * MiB);
  createImage(deskDisks.vdb, 16 * MiB);
  qemuIo(deskDisks.vda, 'write -P 0x11 0 2M');
  await enableDisks('vm', deskDisks, { config: await desk.config(), log: desk.quietLog() });
  const call = (host: TestHost, op: string, subop: string) => {
    const result = host.call('vm', op, subop, managedDomainXml('vm', host === desk ? deskDisks : laptopDisks));
    assert.equal(result.status, 0, `${host.name} ${op}: ${result.stderr}`);
  };
  const killedAt = async (host: TestHost, phase: 'start' | 'stop', step: string, disks: Record<string, string>) => {
    const job = JSON.stringify({ configFile: host.configFile, domain: 'vm', phase, step, disks });
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/lifecycle-until.ts', job], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(child.signal, 'SIGKILL', `killed before ${step} (stdout: ${child.stdout} stderr: ${child.stderr})`);
  };
  /** Every layer the NAS manifest names is there, complete, and hashes to its name. */
  const assertNasWhole = async () => {
    const manifest = (await new NasRepository(new DirTransport({ root: nas, opTimeoutMs: 5000, stallTimeoutMs: 5000 }), { host: 't' }).readManifest('vm')) as Manifest;
    assert.ok(manifest, 'the NAS has a manifest');
    for (const hash of Object.keys(manifest.layers)) {
      const bytes = readFileSync(join(nas, nasPaths.layer('vm', hash)));
      assert.equal(createHash('sha256').update(bytes).digest('hex'), hash, `layer ${hash} on the NAS is whole`);
    }
    return manifest;
  };
  const digests = (disks: Record<string, string>) => ({ vda: guestDigest(disks.vda as string), vdb: guestDigest(disks.vdb as string) });
  return { desk, laptop, deskDisks, laptopDisks, call, killedAt, assertNasWhole, digests };
}

const STOP_STEPS = [
  'stop:seal', 'seal:move-aside', 'seal:rebase-header', 'seal:hash', 'seal:publish', 'seal:new-top', 'create-top:overlay', 'create-top:rename', 'seal:drop-incoming',
  'stop:merge', 'merge:copy', 'merge:publish', 'stop:push', 'stop:publish',
];

describe('SIGKILL during the stop work', () => {
  for (const step of STOP_STEPS) {
    it(`recovers when killed before ${step}`, async (t) => {
      const w = await world(t);
      if (!w) return;
      // A day kept here (no push), then a second day started without the NAS: two
      // pending generations for the stop to merge.
      w.call(w.desk, 'prepare', 'begin');
      qemuIo(w.deskDisks.vda, 'write -P 0x22 1M 2M');
      const stateDir = (await w.desk.config()).stateDir;
      await setFlag(stateDir, 'vm', 'no-push');
      w.call(w.desk, 'release', 'end');
      await w.desk.waitForStop('vm');
      await setFlag(stateDir, 'vm', 'skip-sync');
      w.call(w.desk, 'prepare', 'begin');
      qemuIo(w.deskDisks.vdb, 'write -P 0x33 4M 1M');
      qemuIo(w.deskDisks.vda, 'write -z 0 64k');
      const expected = w.digests(w.deskDisks);

      await w.killedAt(w.desk, 'stop', step, w.deskDisks);
      await w.assertNasWhole();
      w.call(w.desk, 'release', 'end');
      await w.desk.waitForStop('vm');
      assert.deepEqual(w.digests(w.deskDisks), expected, 'the desktop disks are as the guest left them');
      const manifest = await w.assertNasWhole();
      assert.equal(manifest.lease, null);
      assert.deepEqual((await w.desk.state('vm')).pending, [], 'everything reached the NAS');

      w.call(w.laptop, 'prepare', 'begin');
      assert.deepEqual(w.digests(w.laptopDisks), expected, 'and the laptop gets exactly that');
    });
  }
});

describe('SIGKILL while the stop work compacts the local chain', () => {
  for (const step of ['stop:compact', 'compact:copy', 'compact:replace']) {
    it(`recovers when killed before ${step}`, async (t) => {
      const w = await world(t, { maxChainDepth: 2 });
      if (!w) return;
      // Day one pushed; day two makes the chain three layers deep: its stop compacts.
      w.call(w.desk, 'prepare', 'begin');
      qemuIo(w.deskDisks.vda, 'write -P 0x22 1M 2M');
      w.call(w.desk, 'release', 'end');
      await w.desk.waitForStop('vm');
      w.call(w.desk, 'prepare', 'begin');
      qemuIo(w.deskDisks.vda, 'write -P 0x33 2M 2M');
      const expected = w.digests(w.deskDisks);
      await w.killedAt(w.desk, 'stop', step, w.deskDisks);
      assert.deepEqual(w.digests(w.deskDisks), expected, 'killed: the disks read the same');
      w.call(w.desk, 'release', 'end');
      await w.desk.waitForStop('vm');
      assert.deepEqual(w.digests(w.deskDisks), expected, 'recovered: the disks read the same');
      const layers = JSON.parse(spawnSync('qemu-img', ['info', '--backing-chain', '--output=json', '-U', w.deskDisks.vda], { encoding: 'utf8' }).stdout).length - 1;
      assert.ok(layers <= 2, `and the chain is compacted (${layers} layers)`);
      await w.assertNasWhole();
      w.call(w.laptop, 'prepare', 'begin');
      assert.deepEqual(w.digests(w.laptopDisks), expected, 'the laptop gets exactly that');
    });
  }
});

const START_STEPS: Array<[string, 'push' | 'pull' | 'crash']> = [
  ['start:seal', 'crash'],
  ['seal:hash', 'crash'],
  ['seal:new-top', 'crash'],
  ['start:read-nas', 'push'],
  ['start:merge', 'push'],
  ['start:push', 'push'],
  ['start:publish', 'push'],
  ['start:pull', 'pull'],
  ['start:rotate', 'pull'],
  ['create-top:rename', 'pull'],
  ['start:take-lease', 'pull'],
];

describe('SIGKILL during the start work', () => {
  for (const [step, kind] of START_STEPS) {
    it(`recovers when killed before ${step} (${kind})`, async (t) => {
      const w = await world(t);
      if (!w) return;
      let host = w.desk;
      let disks = w.deskDisks;
      w.call(w.desk, 'prepare', 'begin');
      qemuIo(w.deskDisks.vda, 'write -P 0x44 3M 1M');
      if (kind === 'push') {
        await setFlag((await w.desk.config()).stateDir, 'vm', 'no-push');
        w.call(w.desk, 'release', 'end');
        await w.desk.waitForStop('vm');
      } else if (kind === 'pull') {
        w.call(w.desk, 'release', 'end');
        await w.desk.waitForStop('vm');
        host = w.laptop;
        disks = w.laptopDisks;
      } // crash: the desktop "went down" with the VM running; no release ever came.
      const expected = w.digests(w.deskDisks);

      await w.killedAt(host, 'start', step, disks);
      await w.assertNasWhole().catch(() => undefined);
      w.call(host, 'prepare', 'begin');
      assert.deepEqual(w.digests(disks), expected, 'the disks hold what the guest wrote');
      const manifest = await w.assertNasWhole();
      assert.equal(manifest.lease?.host, host.name);
      if (host === w.desk) {
        w.call(w.desk, 'release', 'end');
        await w.desk.waitForStop('vm');
        w.call(w.laptop, 'prepare', 'begin');
        assert.deepEqual(w.digests(w.laptopDisks), expected, 'and the other host gets exactly that');
      }
    });
  }
});

const ENABLE_STEPS = [
  'adopt:convert', 'adopt:compare', 'adopt:incoming', 'adopt:drop-raw', 'seal:rebase-header', 'seal:hash', 'seal:publish', 'create-top:overlay', 'create-top:rename', 'seal:drop-incoming',
  // only the qcow2 disk, sealed after the raw one was taken over completely
  'seal:move-aside',
];

describe('SIGKILL while kss enable takes over a raw and a qcow2 disk', () => {
  for (const step of ENABLE_STEPS) {
    it(`finishes when run again after a kill before ${step}`, async (t) => {
      if (!requireTools(t, 'qemu-img', 'qemu-io')) return;
      count += 1;
      const host = new TestHost('desk', join(root, `e${count}`, 'desk'), join(root, `e${count}`, 'nas'));
      const disks = { vda: { path: host.disk('win.img'), format: 'raw' as const }, vdb: { path: host.disk('win-data.qcow2'), format: 'qcow2' as const } };
      spawnSync('truncate', ['-s', '16M', disks.vda.path]);
      qemuIoAs('raw', disks.vda.path, 'write -P 0x5a 1M 2M', 'write -P 0x5b 15M 1M');
      createImage(disks.vdb.path, 16 * MiB);
      qemuIo(disks.vdb.path, 'write -P 0x6c 0 1M');
      const expected = { vda: guestDigest(disks.vda.path, 'raw'), vdb: guestDigest(disks.vdb.path) };

      const job = JSON.stringify({ configFile: host.configFile, domain: 'win', step, disks });
      const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/enable-until.ts', job], { encoding: 'utf8', timeout: 120_000 });
      assert.equal(child.signal, 'SIGKILL', `killed before ${step} (stdout: ${child.stdout} stderr: ${child.stderr})`);

      const switched: string[][] = [];
      // The domain's definition still says raw (a kill before the switch) or qcow2 already; enable is run as the person would.
      const enabled = await enableDisks('win', disks, { config: await host.config(), log: host.quietLog() }, async (targets) => void switched.push(targets));
      assert.equal(enabled.resumed, false);
      // Killed before seal:move-aside, the first run had taken vda over completely, switch included.
      assert.deepEqual(switched, step === 'seal:move-aside' ? [] : [['vda']], 'the domain is switched to qcow2 before the raw file is replaced');
      assert.deepEqual({ vda: guestDigest(disks.vda.path), vdb: guestDigest(disks.vdb.path) }, expected, 'every byte, now through qcow2 tops');
      for (const { path } of Object.values(disks)) {
        const chain = JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', path], { encoding: 'utf8' })) as Array<{ format: string }>;
        assert.deepEqual(chain.map((entry) => entry.format), ['qcow2', 'qcow2'], `${path}: an empty top on one base layer`);
      }
      assert.deepEqual(readdirSync(`${disks.vda.path}.layers`).filter((name) => !/^[0-9a-f]{64}\.qcow2$/u.test(name)), [], 'no leftovers');
    });
  }
});
