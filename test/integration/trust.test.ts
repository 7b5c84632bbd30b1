// Nothing on the NAS can harm a host: what a host that can write to the NAS (or anyone on
// the share) publishes is checked before this host uses it, and guest data on the host
// stays root's. Two simulated hosts share a directory NAS; the hook is the built
// executable, called as libvirt calls it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { layersDirOf } from '../../lib/layers.js';
import { generationId, nasPaths, serializeManifest, type Manifest } from '../../lib/nas/format.js';
import { domainStateDir } from '../../lib/sync/local-state.js';
import { MiB } from '../helpers/disks.js';
import { twoHosts as twoHostsIn } from '../helpers/two-hosts.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-trust-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

const twoHosts = (t: TestContext, domain: string) => twoHostsIn(t, root, domain);

/** Every file under a directory, recursively, with its permission bits. */
function modesUnder(dir: string): Record<string, number> {
  const found: Record<string, number> = {};
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) found[join(entry.parentPath, entry.name)] = statSync(join(entry.parentPath, entry.name)).mode & 0o777;
  }
  return found;
}

describe('what a host pulls', () => {
  it("refuses a published layer whose header names another VM's disk as its backing file, changing nothing here", async (t) => {
    const s = await twoHosts(t, 'evil');
    if (!s) return;
    // Another VM's disk on the laptop, root's and private.
    const otherVm = s.laptop.disk('other-vm.raw');
    writeFileSync(otherVm, Buffer.alloc(16 * MiB, 0x5a));
    chmodSync(otherVm, 0o600);
    await s.session(s.laptop); // the laptop has used the VM before
    const before = await s.manifest();
    const head = before.generations[before.head as string]!;
    // The attacker can write the NAS: a layer on the desktop's vda layer in the manifest,
    // whose header reads the laptop's other VM, published as a proper new generation.
    const made = join(root, 'evil-layer.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', otherVm, made, String(16 * MiB)]);
    const evil = createHash('sha256').update(readFileSync(made)).digest('hex');
    copyFileSync(made, join(s.nas, nasPaths.layer('evil', evil)));
    const generation = { parent: head.id, host: 'desk', created: new Date().toISOString(), disks: { ...head.disks, vda: evil } };
    const id = generationId(generation);
    const attacked: Manifest = {
      ...before,
      revision: before.revision + 1,
      head: id,
      generations: { ...before.generations, [id]: { id, ...generation } },
      layers: { ...before.layers, [evil]: { parent: head.disks.vda as string, size: statSync(made).size } },
    };
    writeFileSync(join(s.nas, nasPaths.manifest('evil')), serializeManifest(attacked));

    const files = () => [...readdirSync(layersDirOf(s.laptopDisks.vda)), ...readdirSync(layersDirOf(s.laptopDisks.vdb))].sort();
    const stateFile = join(domainStateDir((await s.laptop.config()).stateDir, 'evil'), 'state.json');
    const stateOf = () => (existsSync(stateFile) ? readFileSync(stateFile, 'utf8') : 'none');
    const stateBefore = stateOf();
    const filesBefore = files();
    const start = s.call(s.laptop, 'prepare');
    assert.notEqual(start.status, 0, 'the start is refused');
    assert.match(start.stderr, new RegExp(`layer ${evil} of evil from .* was refused: its backing file is "${otherVm}", not its parent layer ${head.disks.vda}\\.qcow2`, 'u'));
    assert.deepEqual(files(), filesBefore, 'no layer and no partial file was kept');
    assert.equal(stateOf(), stateBefore, "the laptop's state is unchanged");
    assert.equal(statSync(otherVm).mode & 0o777, 0o600);

    // Once the NAS is repaired, the same start goes ahead: nothing here was left damaged.
    writeFileSync(join(s.nas, nasPaths.manifest('evil')), serializeManifest({ ...before, revision: attacked.revision + 1 }));
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks));
  });
});

describe('what a host pulls, by size', () => {
  it('refuses a pull that the image filesystem cannot hold (with room left for running VMs), before a byte moves', async (t) => {
    const s = await twoHosts(t, 'huge');
    if (!s) return;
    await s.session(s.laptop);
    const before = await s.manifest();
    const head = before.generations[before.head as string]!;
    // A layer the manifest says is 64 TiB: a sparse file, or a zstd bomb over SSH, could be just that.
    const huge = 'e'.repeat(64);
    const generation = { parent: head.id, host: 'desk', created: new Date().toISOString(), disks: { ...head.disks, vda: huge } };
    const id = generationId(generation);
    writeFileSync(
      join(s.nas, nasPaths.manifest('huge')),
      serializeManifest({ ...before, revision: before.revision + 1, head: id, generations: { ...before.generations, [id]: { id, ...generation } }, layers: { ...before.layers, [huge]: { parent: head.disks.vda as string, size: 64 * 2 ** 40 } } }),
    );
    const files = () => readdirSync(layersDirOf(s.laptopDisks.vda)).sort();
    const filesBefore = files();
    const start = s.call(s.laptop, 'prepare');
    assert.notEqual(start.status, 0, 'the start is refused');
    assert.match(start.stderr, /not enough space to pull: 64\.0 TiB to fetch into .*, where [\d.]+ GiB is free and [\d.]+ GiB stays free for the VMs/u);
    assert.deepEqual(files(), filesBefore, 'nothing was written here');
  });
});

describe('guest data on a host', () => {
  it('is never world-readable: layers sealed, pushed and pulled are 0440, tops 0600, and an older install\'s are made so at the next start', async (t) => {
    const s = await twoHosts(t, 'private');
    if (!s) return;
    s.ok(s.laptop, 'prepare');
    const expected = (path: string) => (path.endsWith('.layers') || /\.layers\//u.test(path) ? 0o440 : 0o600);
    for (const disks of [s.deskDisks, s.laptopDisks]) {
      for (const top of Object.values(disks)) {
        assert.equal(statSync(top).mode & 0o777, 0o600, `${top} is its owner's only`);
        const layers = modesUnder(layersDirOf(top));
        assert.ok(Object.keys(layers).length > 0);
        for (const [path, mode] of Object.entries(layers)) assert.equal(mode, expected(path), `${path}: ${mode.toString(8)}`);
      }
    }
    // What an older version left (layers 0444, tops 0644) is made private by the next start.
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop('private');
    for (const top of Object.values(s.laptopDisks)) {
      chmodSync(top, 0o644);
      for (const path of Object.keys(modesUnder(layersDirOf(top)))) chmodSync(path, 0o444);
    }
    s.ok(s.laptop, 'prepare');
    for (const top of Object.values(s.laptopDisks)) {
      assert.equal(statSync(top).mode & 0o777, 0o600, `${top} after an upgrade`);
      for (const [path, mode] of Object.entries(modesUnder(layersDirOf(top)))) assert.equal(mode, 0o440, `${path} after an upgrade: ${mode.toString(8)}`);
    }
    const onNas = modesUnder(join(s.nas, nasPaths.layersDir('private')));
    assert.ok(Object.keys(onNas).length > 0);
    for (const [path, mode] of Object.entries(onNas)) assert.equal(mode, 0o440, `${path} on the NAS: ${mode.toString(8)}`);
  });
});
