// Local layers no chain needs are removed (lib/sync/local-gc.ts), and `kss status` tells
// what a domain takes here and on the NAS. Real qemu-img and qemu-io; the hook and the
// CLI are the built executable.
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTop, layersDirOf, sealTop, compactLayer, type EngineDeps } from '../../lib/layers.js';
import { generationId, nasPaths, type Generation } from '../../lib/nas/format.js';
import { formatBytes } from '../../lib/progress.js';
import { removeUnusedLayers } from '../../lib/sync/local-gc.js';
import { setFlag, type LocalState } from '../../lib/sync/local-state.js';
import { MiB, createImage, guestDigest, qemuIo, randomQcow2 } from '../helpers/disks.js';
import type { TestHost } from '../helpers/hosts.js';
import { requireTools } from '../helpers/tools.js';
import { twoHosts } from '../helpers/two-hosts.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-local-gc-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/**
 * The files of a disk's layers directory must be exactly the layers its chain (kss chain)
 * reads through, and the chain of `place` (the other host's last place on this disk,
 * kept for a catch-up layer) when it is here.
 */
function assertOnlyChain(host: TestHost, disk: string, when: string, place?: string): void {
  const chainOf = (path: string) => {
    const shown = host.kss('chain', path, '--json');
    assert.equal(shown.status, 0, shown.stderr);
    return (JSON.parse(shown.stdout) as Array<{ path: string }>).map((entry) => entry.path);
  };
  const layers = chainOf(disk).slice(1);
  const placeFile = place === undefined ? undefined : join(layersDirOf(disk), `${place}.qcow2`);
  if (placeFile !== undefined && existsSync(placeFile)) layers.push(...chainOf(placeFile));
  for (const path of layers) assert.equal(dirname(path), layersDirOf(disk), `${when}: ${path} is in the layers directory`);
  assert.deepEqual(readdirSync(layersDirOf(disk)).sort(), [...new Set(layers.map((path) => basename(path)))].sort(), `${when}: ${host.name}'s ${basename(disk)}.layers holds its chain (and the other host's place) and nothing else`);
}

/** A generation of one disk layer per target, as the state records them. */
function generation(disks: Record<string, string>, parent: string | null = null): Generation {
  const made = { parent, host: 'desk', created: '2026-11-22T06:00:00.000Z', disks };
  return { id: generationId(made), ...made };
}

describe('removing unused local layers', () => {
  it('after a year in miniature on two hosts (compactions, a merge, a rollback) keeps exactly what the chains read, and every byte', async (t) => {
    const s = await twoHosts(t, root, 'year', { maxChainDepth: 4 });
    if (!s) return;
    const { desk, laptop } = s;
    const disksOf = (host: TestHost) => (host === desk ? s.deskDisks : s.laptopDisks);
    // What the guest wrote, by session: each pattern at its own place, so all of them stay readable.
    const written: Array<{ session: number; disk: 'vda' | 'vdb'; pattern: number; at: number; length: number }> = [
      { session: 0, disk: 'vda', pattern: 0x11, at: 0, length: 2 * MiB },
      { session: 0, disk: 'vdb', pattern: 0x12, at: 4 * MiB, length: MiB },
    ];
    const made = new Map<number, string>(); // session -> the generation its stop pushed
    /** Every pattern still written reads back through the host's chains (qemu-io fails on a mismatch). */
    const assertEveryPattern = (host: TestHost) => {
      for (const w of written) qemuIo(disksOf(host)[w.disk], `read -P ${w.pattern} ${w.at} ${w.length}`);
    };
    /** Every disk of `host` holds its chain and the other host's place (from the NAS), nothing else. */
    const assertOnlyChains = async (host: TestHost, when: string) => {
      const manifest = await s.manifest();
      const other = manifest.hosts?.[host === desk ? 'laptop' : 'desk']?.generation;
      for (const [target, disk] of Object.entries(disksOf(host))) assertOnlyChain(host, disk, when, other === undefined ? undefined : manifest.generations[other]?.disks[target]);
    };
    let session = 0;
    const day = async (host: TestHost, { noPush = false, noSync = false } = {}) => {
      session += 1;
      const n = session;
      const stateDir = (await host.config()).stateDir;
      if (noSync) await setFlag(stateDir, 'year', 'skip-sync');
      if (noPush) await setFlag(stateDir, 'year', 'no-push');
      const mine: typeof written = [{ session: n, disk: 'vda', pattern: 0x40 + n, at: 6 * MiB + n * 256 * 1024, length: 256 * 1024 }];
      if (n % 2 === 1) mine.push({ session: n, disk: 'vdb', pattern: 0x80 + n, at: 8 * MiB + n * 128 * 1024, length: 128 * 1024 });
      await s.session(host, (disks) => {
        for (const w of mine) qemuIo(disks[w.disk], `write -P ${w.pattern} ${w.at} ${w.length}`);
      });
      written.push(...mine);
      const state = await host.state('year');
      if (state.pending.length === 0) made.set(n, state.synced?.id as string);
      await assertOnlyChains(host, `after session ${n} on ${host.name}`);
      assertEveryPattern(host);
    };

    for (const host of [desk, laptop, desk, laptop]) await day(host);
    await day(desk, { noPush: true }); // kept here ...
    await day(desk, { noSync: true }); // ... and merged with this one at its stop
    assert.match(desk.log('year'), /merged pending generations into one/u);
    for (const host of [laptop, desk, laptop, desk]) await day(host);
    for (const host of [desk, laptop]) {
      assert.match(host.log('year'), /compacted the local chain/u, `${host.name} compacted`);
      assert.match(host.log('year'), /removed unused local layers .*\blayers=\d+ bytes=\d+/u, `${host.name} removed layers`);
    }

    // The laptop goes back to what session 4 left; the later patterns are gone from the disks.
    const back = laptop.kss('rollback', 'year', '--to', (made.get(4) as string).slice(0, 16));
    assert.equal(back.status, 0, back.stderr);
    const dropped = written.filter((w) => w.session > 4);
    written.splice(0, written.length, ...written.filter((w) => w.session <= 4));
    for (const w of dropped) qemuIo(s.laptopDisks[w.disk], `read -P 0 ${w.at} ${w.length}`);
    for (const host of [laptop, desk, laptop]) await day(host);

    // Both hosts on the newest generation, their last stop collected: the same bytes, only the layers their chains need.
    await day(desk);
    await s.session(laptop);
    for (const host of [desk, laptop]) {
      await assertOnlyChains(host, `at the end on ${host.name}`);
      assertEveryPattern(host);
    }
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks), 'both hosts read the same disks');
  });

  it('keeps the chains of the top, the synced, the pending and the kept-also generations, and only removes layer files', async (t) => {
    if (!requireTools(t, 'qemu-img', 'qemu-io')) return;
    const dir = join(root, 'unit');
    mkdirSync(dir);
    const top = join(dir, 'vm.qcow2');
    const other = join(dir, 'vm-home.qcow2');
    const layers = layersDirOf(top);
    const seal = async (pattern: number, at: number) => {
      qemuIo(top, `write -P ${pattern} ${at}M 1M`);
      return ((await sealTop(top)) as { hash: string }).hash;
    };
    createImage(top, 16 * MiB);
    qemuIo(top, 'write -P 0x01 0 1M');
    const base = ((await sealTop(top, undefined, { evenIfEmpty: true })) as { hash: string }).hash;
    const l1 = await seal(0x02, 1);
    const merged = await seal(0x03, 2); // on l1: merged away, named by nothing
    await createTop(top, base);
    const pending = await seal(0x04, 3); // on the base, outside the top's chain
    await createTop(top, base);
    const side = await seal(0x05, 4);
    const kept = await seal(0x06, 5); // on side: a kept-also generation's, outside every other chain
    await createTop(top, l1);
    const l2 = await seal(0x07, 6);
    await compactLayer(layers, l2, base); // l2's file now stands on the base: l1 is no longer read
    const stray = randomQcow2(join(dir, 'stray.qcow2'), 64 * 1024);
    copyFileSync(join(dir, 'stray.qcow2'), join(layers, `${stray}.qcow2`));
    const others = ['merging-1-2.qcow2', `.pull-${'a'.repeat(64)}.part`, 'converting-3-4.qcow2', `${'A'.repeat(64)}.qcow2`, 'notes.txt'];
    for (const name of others) writeFileSync(join(layers, name), 'not a layer');
    // A second disk with an unfinished seal: nothing of it may go.
    createImage(other, 16 * MiB);
    qemuIo(other, 'write -P 0x21 0 1M');
    const otherBase = ((await sealTop(other, undefined, { evenIfEmpty: true })) as { hash: string }).hash;
    qemuIo(other, 'write -P 0x22 1M 1M');
    const otherJunk = ((await sealTop(other)) as { hash: string }).hash;
    await createTop(other, otherBase);
    writeFileSync(join(layersDirOf(other), 'incoming.qcow2'), 'a seal in the middle');
    const otherFiles = readdirSync(layersDirOf(other)).sort();

    const path = (hash: string) => join(layers, `${hash}.qcow2`);
    const digests = () => [top, path(pending), path(kept)].map((file) => guestDigest(file));
    const before = digests();
    const gone = [l1, merged, stray].map(path);
    const goneBytes = gone.reduce((sum, file) => sum + statSync(file).blocks * 512, 0);
    const state: LocalState = {
      format: 1,
      domain: 'vm',
      disks: { vda: top, vdb: other },
      synced: generation({ vda: l2, vdb: otherBase }),
      pending: [{ generation: generation({ vda: pending, vdb: otherBase }), layers: {} }],
      leaseHeld: false,
    };
    const keepAlso = [generation({ vda: kept, vdb: otherJunk }), generation({ vda: 'b'.repeat(64) })]; // the last one is not here

    // Refused while a seal is under way, or when a chain cannot be read.
    const all = readdirSync(layers).sort();
    const refused = await removeUnusedLayers({ ...state, sealing: { onto: null, since: '2026-11-22T06:00:00.000Z', tops: {} } }, keepAlso);
    assert.deepEqual([refused.removed, refused.skipped.map((skip) => skip.disk)], [[], ['vda', 'vdb']]);
    const failing: EngineDeps = { run: async () => Promise.reject(new Error('qemu-img failed')) };
    const unread = await removeUnusedLayers(state, keepAlso, failing);
    assert.deepEqual(unread.removed, []);
    assert.match(unread.skipped.find((skip) => skip.disk === 'vda')?.why ?? '', /cannot read the chain it keeps: qemu-img failed/u);
    const missing = await removeUnusedLayers({ ...state, pending: [{ generation: generation({ vda: 'c'.repeat(64) }), layers: {} }] }, keepAlso);
    assert.deepEqual(missing.removed, [], 'a layer the state names is missing: everything stays');
    assert.deepEqual(readdirSync(layers).sort(), all, 'nothing was removed');

    const result = await removeUnusedLayers(state, keepAlso);
    assert.deepEqual(result.removed.sort(), gone.sort(), 'the merged-away, the compacted-away and a stray layer go');
    assert.equal(result.bytes, goneBytes);
    assert.deepEqual(result.skipped, [{ disk: 'vdb', why: `a seal is unfinished (${join(layersDirOf(other), 'incoming.qcow2')})` }]);
    assert.deepEqual(readdirSync(layers).sort(), [base, l2, pending, side, kept].map((hash) => `${hash}.qcow2`).concat(others).sort());
    assert.deepEqual(readdirSync(layersDirOf(other)).sort(), otherFiles, 'the disk with an unfinished seal is left alone');
    assert.deepEqual(digests(), before, 'the top, the pending and the kept-also layers read the same');

    const again = await removeUnusedLayers(state, keepAlso);
    assert.deepEqual(again.removed, [], 'a second run finds nothing more');
  });
});

describe('kss status: what a domain takes', () => {
  it('tells the bytes here (tops and layers directories) and on the NAS (the manifest)', async (t) => {
    const s = await twoHosts(t, root, 'sized');
    if (!s) return;
    await s.session(s.desk, (disks) => qemuIo(disks.vda, 'write -P 0x31 6M 3M'));
    await s.session(s.laptop, (disks) => qemuIo(disks.vdb, 'write -P 0x32 9M 2M'));
    const allocated = (file: string) => statSync(file).blocks * 512;
    for (const host of [s.desk, s.laptop]) {
      const disks = host === s.desk ? s.deskDisks : s.laptopDisks;
      const status = JSON.parse(host.kss('status', 'sized', '--json').stdout)[0] as { bytes: { here: number; nas: number | null } };
      let here = 0;
      for (const disk of Object.values(disks)) {
        here += allocated(disk);
        for (const name of readdirSync(layersDirOf(disk))) here += allocated(join(layersDirOf(disk), name));
      }
      const nas: number = Object.values((await s.manifest()).layers).reduce((sum, layer) => sum + layer.size, 0);
      const nasLayers = join(s.nas, nasPaths.layersDir('sized'));
      const onNas = readdirSync(nasLayers).reduce((sum: number, name: string) => sum + statSync(join(nasLayers, name)).size, 0);
      assert.equal(nas, onNas, 'the manifest sizes are those of the NAS files');
      assert.deepEqual(status.bytes, { here, nas }, `${host.name}: bytes here and on the NAS`);
      assert.ok(here > 2 * MiB && nas > 5 * MiB, `plausible: ${JSON.stringify(status.bytes)}`);
      assert.match(host.kss('status', 'sized').stdout, new RegExp(`\\n  uses ${formatBytes(here).replace('.', '\\.')} here, ${formatBytes(nas).replace('.', '\\.')} on the NAS\\n$`, 'u'));
    }
    renameSync(s.nas, `${s.nas}.away`);
    try {
      const offline = JSON.parse(s.desk.kss('status', 'sized', '--json').stdout)[0] as { bytes: { here: number; nas: number | null } };
      assert.equal(offline.bytes.nas, null, 'the NAS could not be asked');
      assert.ok(offline.bytes.here > 0);
      assert.match(s.desk.kss('status', 'sized').stdout, /\n {2}uses \d+\.\d [KM]iB here, \? on the NAS\n$/u);
    } finally {
      renameSync(`${s.nas}.away`, s.nas);
    }
  });
});
