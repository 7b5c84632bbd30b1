// A year of use, in a few sessions with small limits: the NAS head's chain stays within
// nasChainDepth because the host that pushed publishes its merged layers; a host that
// lacks layers fetches the merged ones instead; retention runs after each push. Two
// simulated hosts share a directory NAS; the hook is the built executable.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashOfLayerFileName } from '../../lib/file-names.js';
import { canonicalChain } from '../../lib/nas/chains.js';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import { emptyManifest, manifestProblem, nasPaths, type Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { missingLayers } from '../../lib/sync/disks.js';
import { domainStateDir } from '../../lib/sync/local-state.js';
import { qemuIo } from '../helpers/disks.js';
import { requireTools } from '../helpers/tools.js';
import { twoHosts } from '../helpers/two-hosts.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-year-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** Every layer the manifest lists is on the NAS and hashes to its name; the manifest is valid. */
function requireWholeNas(nas: string, domain: string, manifest: Manifest): void {
  assert.equal(manifestProblem(manifest), undefined);
  const dir = join(nas, nasPaths.layersDir(domain));
  const files = new Set(readdirSync(dir).map(hashOfLayerFileName));
  for (const hash of Object.keys(manifest.layers)) {
    assert.ok(files.has(hash), `listed layer ${hash} is on the NAS`);
    assert.equal(createHash('sha256').update(readFileSync(join(dir, `${hash}.qcow2`))).digest('hex'), hash, `layer ${hash} verifies`);
  }
}

const depths = (manifest: Manifest) => {
  const head = manifest.generations[manifest.head as string] as { disks: Record<string, string> };
  return Object.fromEntries(Object.entries(head.disks).map(([target, layer]) => [target, canonicalChain(manifest.layers, layer).length]));
};

describe('a year of use on the NAS', () => {
  it('keeps the NAS head chain within nasChainDepth by merged layers, and a host without the layers fetches those and reads every byte', async (t) => {
    const s = await twoHosts(t, root, 'year', { maxChainDepth: 2, nasChainDepth: 3 });
    if (!s) return;
    const seen: number[] = [];
    for (let i = 1; i <= 8; i += 1) {
      await s.session(s.desk, (disks) => {
        qemuIo(disks.vdb, `write -P ${0x20 + i} 0 1M`, `write -P ${0x40 + i} ${i}M 256k`); // a hot region, and new data
        if (i % 3 === 0) qemuIo(disks.vda, `write -P ${0x60 + i} 1M 64k`);
      });
      const manifest = await s.manifest();
      requireWholeNas(s.nas, s.domain, manifest);
      for (const [target, depth] of Object.entries(depths(manifest))) {
        assert.ok(depth <= 3, `after session ${i}, disk ${target}'s NAS chain holds ${depth} files`);
        seen.push(depth);
      }
    }
    const manifest = await s.manifest();
    const merged = Object.values(manifest.layers).filter((info) => info.readsAs !== undefined);
    assert.ok(merged.length > 0, 'the desk published merged layers');
    assert.match(s.desk.log(s.domain), /published merged layers/u);
    // Everything the laptop needs it fetches through the merged layers, and reads exactly what the desk wrote.
    await s.handOver(s.digests(s.deskDisks));
    const pulls = s.laptop.log(s.domain).split('\n').filter((line) => line.includes('pulling layer'));
    assert.ok(pulls.some((line) => / merged=[0-9a-f]{64}/u.test(line)), `the laptop fetched a merged layer:\n${pulls.join('\n')}`);
    const sessions = Object.keys(manifest.generations).length;
    assert.ok(pulls.length < sessions * 2, `the laptop fetched ${pulls.length} files, fewer than one per disk and session (${sessions * 2})`);
  });

  it('moves the net change to a host that was away, as one catch-up layer per disk, and drops it once the host is back', async (t) => {
    const s = await twoHosts(t, root, 'away');
    if (!s) return;
    await s.handOver(s.digests(s.deskDisks)); // the laptop has the VM once
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop(s.domain);
    // The laptop is away for 8 sessions: each rewrites the same 1 MiB of /home and adds 64 KiB.
    s.ok(s.desk, 'prepare');
    s.ok(s.desk, 'release');
    await s.desk.waitForStop(s.domain);
    for (let i = 1; i <= 8; i += 1) {
      await s.session(s.desk, (disks) => qemuIo(disks.vdb, `write -P ${0x30 + i} 0 1M`, `write -P ${0x50 + i} ${2 + i}M 64k`));
    }
    const manifest = await s.manifest();
    requireWholeNas(s.nas, s.domain, manifest);
    const catchUps = Object.entries(manifest.layers).filter(([, info]) => info.catchUpFor === 'laptop');
    assert.equal(catchUps.length, 1, `one catch-up layer for the laptop's return, for /home only: ${JSON.stringify(catchUps)}`);
    // Without it, the laptop would fetch the 8 layers of /home, each at least the 1 MiB rewritten: kss delta shows the choice.
    const delta = s.laptop.kss('delta', s.domain, '--json');
    assert.equal(delta.status, 0, delta.stderr);
    const { pull } = JSON.parse(delta.stdout) as { pull: { bytes: number; layers: number; merged: number; withoutMerged: { bytes: number; layers: number } } };
    assert.deepEqual([pull.layers, pull.merged], [1, 1], 'one file to fetch, the catch-up layer');
    assert.equal(pull.bytes, catchUps[0]?.[1].size);
    assert.ok(pull.withoutMerged.layers >= 8 && pull.withoutMerged.bytes > 4 * pull.bytes, `instead of the layers: ${JSON.stringify(pull)}`);
    assert.match(s.laptop.kss('delta', s.domain).stdout, /to pull .* \(1 layer, 1 of them merged, instead of the layers themselves: .* in \d+ layers\)/u);
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks), 'the laptop reads exactly what the desk wrote');
    const pulled = [...s.laptop.log(s.domain).matchAll(/pulling layer .*?bytes=(\d+)/gu)].slice(-8);
    const lines = s.laptop.log(s.domain).split('\n').filter((line) => line.includes('pulling layer')).slice(-3);
    const last = lines.at(-1) ?? '';
    assert.match(last, new RegExp(`merged=${catchUps[0]?.[0]}`, 'u'), `the return fetched the catch-up layer: ${lines.join('\n')}`);
    const bytes = Number(/bytes=(\d+)/u.exec(last)?.[1]);
    const netChange = 2 ** 20 + 8 * 64 * 1024;
    assert.ok(bytes < 1.5 * netChange, `it moved ${bytes} bytes for a net change of ${netChange} (${pulled.length} pulls)`);
    // Back in step: the desk's next upkeep drops the catch-up from the manifest.
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop(s.domain);
    await s.session(s.desk, (disks) => qemuIo(disks.vdb, 'write -P 0x70 0 64k'));
    const after = await s.manifest();
    assert.equal(Object.hasOwn(after.layers, catchUps[0]?.[0] as string), false, 'the catch-up left the manifest');
    assert.ok(Object.hasOwn(after.dropped ?? {}, catchUps[0]?.[0] as string), 'and waits a day before its file goes');
    requireWholeNas(s.nas, s.domain, after);
  });

  it('leaves the NAS whole when killed (SIGKILL) before each step of publishing merged and catch-up layers and of retention, and the next run finishes the work', async (t) => {
    const base = join(root, 'cut-world');
    mkdirSync(base);
    const s = await twoHosts(t, base, 'cut', { maxChainDepth: 2 });
    if (!s) return;
    // The laptop was last in step after the first session (as if it had pulled it); then it is away.
    const write = (i: number) => (disks: { vdb: string }) => qemuIo(disks.vdb, `write -P ${0x30 + i} 0 1M`, `write -P ${0x50 + i} ${2 + i}M 64k`);
    await s.session(s.desk, write(1));
    const nas = new NasRepository(new DirTransport({ root: s.nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'laptop' });
    const place = (await s.manifest()).head as string;
    await nas.updateManifest(s.domain, (m) => ({ ...m, hosts: { ...m.hosts, laptop: { generation: place, at: new Date().toISOString() } } }));
    for (let i = 2; i <= 5; i += 1) await s.session(s.desk, write(i));
    // As if the last push's upkeep had not run yet: no catch-up layer listed (the files stay, unnamed).
    await nas.updateManifest(s.domain, (m) => ({ ...m, layers: Object.fromEntries(Object.entries(m.layers).filter(([, info]) => info.catchUpFor === undefined)) }));
    // The upkeep with a NAS chain of at most 3 files and only the head kept, three and five days on.
    const config = join(base, 'upkeep.json');
    writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(s.desk.configFile, 'utf8')), nasChainDepth: 3, retentionGenerations: 1, retentionDays: 1, retentionDailyDays: 0, retentionWeeklyDays: 0 }));
    const day = 86_400_000;
    const passes = [new Date(Date.now() + 3 * day).toISOString(), new Date(Date.now() + 5 * day).toISOString()];
    const expected = s.digests(s.deskDisks);
    const run = (mode: 'kill' | 'trace', step?: string, occurrence?: number) =>
      spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/upkeep-until.ts', JSON.stringify({ configFile: config, domain: s.domain, passes, step, occurrence, mode })], { encoding: 'utf8', timeout: 120_000 });
    /** The NAS as the upkeep leaves it: the files, and what the manifest lists. */
    const picture = async () => {
      const manifest = await s.manifest();
      requireWholeNas(s.nas, s.domain, manifest);
      return { files: readdirSync(join(s.nas, nasPaths.layersDir(s.domain))).sort(), layers: Object.keys(manifest.layers).sort(), generations: Object.keys(manifest.generations).sort(), dropped: manifest.dropped ?? {} };
    };
    const template = `${base}.template`;
    execFileSync('cp', ['-a', base, template]);
    const traced = run('trace');
    assert.equal(traced.status, 0, traced.stderr);
    const steps = JSON.parse(traced.stdout) as string[];
    for (const step of ['nas-compact:hash', 'nas-compact:upload', 'nas-compact:publish', 'catch-up:merge', 'catch-up:upload', 'catch-up:publish', 'retention:manifest', 'retention:remove']) {
      assert.ok(steps.includes(step), `the upkeep passes ${step}: ${steps.join(' ')}`);
    }
    const done = await picture();
    assert.deepEqual(done.dropped, {}, 'the files that left the manifest are gone after the grace period');
    assert.deepEqual(done.files, done.layers.map((hash) => `${hash}.qcow2`), 'and the NAS holds exactly the files it lists');
    assert.ok(Object.values((await s.manifest()).layers).some((info) => info.catchUpFor === 'laptop'), 'a catch-up layer for the laptop');
    const seen = new Map<string, number>();
    for (const step of steps) {
      const occurrence = (seen.get(step) ?? 0) + 1;
      seen.set(step, occurrence);
      rmSync(base, { recursive: true, force: true });
      execFileSync('cp', ['-a', template, base]);
      const killed = run('kill', step, occurrence);
      assert.equal(killed.signal, 'SIGKILL', `killed before ${step} #${occurrence}: ${killed.stdout} ${killed.stderr}`);
      await picture(); // whole right after the cut
      rmSync(join(domainStateDir((await s.desk.config()).stateDir, s.domain), 'upkeep.lock'), { recursive: true, force: true }); // as after a reboot
      const again = run('trace');
      assert.equal(again.status, 0, again.stderr);
      assert.deepEqual(await picture(), done, `after a cut before ${step} #${occurrence}, the next run finishes the work`);
      assert.deepEqual(s.digests(s.deskDisks), expected, 'the desk reads what the guest wrote');
    }
    // What retention kept is restorable: a host without anything gets the head.
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), expected);
  });
  it('fetches what a layer here lacks below it (a local collection cut between two removals left it without its parent)', async (t) => {
    if (!requireTools(t, 'qemu-img', 'qemu-io')) return;
    const work = mkdtempSync(join(tmpdir(), 'kss-missing-'));
    try {
      const top = join(work, 'vda.qcow2');
      const dir = `${top}.layers`;
      mkdirSync(dir);
      const sha = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
      const make = (backing: string | null) => {
        const temp = join(dir, 'tmp.qcow2');
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', ...(backing ? ['-F', 'qcow2', '-b', `${backing}.qcow2`] : []), temp, '1M'], { cwd: dir });
        execFileSync('qemu-io', ['-c', `write -P ${Math.floor(Math.random() * 200)} 0 64k`, temp]);
        const hash = sha(temp);
        execFileSync('mv', [temp, join(dir, `${hash}.qcow2`)]);
        return hash;
      };
      const base = make(null);
      const a2 = make(base);
      const a3 = make(a2);
      unlinkSync(join(dir, `${a2}.qcow2`)); // GC unlinked a2, then the power went
      const manifest = emptyManifest('vm');
      manifest.layers = { [base]: { parent: null, size: 1 }, [a2]: { parent: base, size: 1 }, [a3]: { parent: a2, size: 1 } };
      const state = { format: 1, domain: 'vm', disks: { vda: top }, synced: null, pending: [], leaseHeld: false } as never;
      const missing = await missingLayers(state, manifest, { id: 'x', parent: null, host: 'desk', created: new Date().toISOString(), disks: { vda: a3 } });
      assert.deepEqual(missing.map((step) => [step.layer, step.file]), [[a2, a2]], 'the missing parent is fetched');
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('keeps every generation retention keeps restorable with kss rollback, on both hosts, byte for byte', async (t) => {
    const s = await twoHosts(t, root, 'keep', { maxChainDepth: 2, nasChainDepth: 3 });
    if (!s) return;
    await s.handOver(s.digests(s.deskDisks));
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop(s.domain);
    // Sessions on both hosts, each its own writes; what each generation holds is noted.
    const held = new Map<string, Record<string, string>>();
    const note = async (host: typeof s.desk) => held.set((await s.manifest()).head as string, s.digests(host === s.desk ? s.deskDisks : s.laptopDisks));
    await note(s.laptop);
    for (let i = 1; i <= 6; i += 1) {
      const host = i % 2 === 1 ? s.desk : s.laptop;
      await s.session(host, (disks) => qemuIo(disks.vdb, `write -P ${0x30 + i} 0 1M`, `write -P ${0x50 + i} ${2 + i}M 64k`, ...(i === 3 ? [`write -P ${0x70 + i} 0 64k`] : [])));
      await note(host);
      // A snapshot named here (kss snapshot create also pushes, which needs libvirt's definition).
      if (i === 2) await new NasRepository(new DirTransport({ root: s.nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'laptop' }).addSnapshot(s.domain, 'early', (await s.manifest()).head as string);
    }
    // Retention three and five days on, keeping the nearest 3 (and the snapshot, and each host's place).
    const config = join(root, 'keep-upkeep.json');
    writeFileSync(config, JSON.stringify({ ...JSON.parse(readFileSync(s.desk.configFile, 'utf8')), retentionGenerations: 3, retentionDays: 1, retentionDailyDays: 0, retentionWeeklyDays: 0 }));
    const day = 86_400_000;
    const passes = [new Date(Date.now() + 3 * day).toISOString(), new Date(Date.now() + 5 * day).toISOString()];
    const run = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/upkeep-until.ts', JSON.stringify({ configFile: config, domain: s.domain, passes, mode: 'trace' })], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(run.status, 0, run.stderr);
    const manifest = await s.manifest();
    requireWholeNas(s.nas, s.domain, manifest);
    const kept = [...held.keys()].filter((id) => Object.hasOwn(manifest.generations, id));
    assert.ok(kept.length < held.size, `retention dropped generations (kept ${kept.length} of ${held.size})`);
    assert.ok(kept.includes(manifest.snapshots?.early?.generation as string), 'the snapshot is kept');
    assert.ok(Object.keys(manifest.dropped ?? {}).length === 0 && readdirSync(join(s.nas, nasPaths.layersDir(s.domain))).length === Object.keys(manifest.layers).length, 'and the files it dropped are gone');
    for (const host of [s.desk, s.laptop]) {
      for (const id of kept) {
        const back = host.kss('rollback', s.domain, '--to', id);
        assert.equal(back.status, 0, `${host.name}: rollback to ${id.slice(0, 12)}: ${back.stderr}`);
        assert.deepEqual(s.digests(host === s.desk ? s.deskDisks : s.laptopDisks), held.get(id), `${host.name} reads generation ${id.slice(0, 12)} exactly`);
      }
    }
  });
});
