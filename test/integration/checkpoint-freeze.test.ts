// Freezing a running VM's writes with libvirt's backup API, on a real libvirtd: each
// checkpoint is a layer holding what the guest wrote since the one before, on every
// disk at once, while the guest keeps running on its unchanged top; after the stop, the
// remainder is what came after the last one. Every byte is read back through the chains.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { LiveCheckpoints, backupXml, checkpointXml, parseJobInfo, parseSize, redefineXml } from '../../lib/checkpoint/freeze.js';
import { moveTopOntoCheckpoint } from '../../lib/checkpoint/remainder.js';
import { layerFileName } from '../../lib/file-names.js';
import { sha256File } from '../../lib/hash.js';
import { layersDirOf, readLayerHashes, sealTop } from '../../lib/layers.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { requireTools } from '../helpers/tools.js';

const IMAGES = '/var/lib/libvirt/images';
let work: string;
let host: LibvirtHost | undefined;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, 'qemu-io', 'qemu-storage-daemon')) return;
  work = mkdtempSync(join(tmpdir(), 'kss-freeze-'));
  host = await LibvirtHost.start('freeze', join(work, 'freeze'), {}, { bare: true });
});
after(() => {
  host?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** A disk as prepare leaves it: a base layer, and a fresh top on it with the session's first bitmap. */
async function preparedDisk(h: LibvirtHost, name: string, fill: number): Promise<{ top: string; outsideTop: string; base: string }> {
  const top = `${IMAGES}/${name}.qcow2`;
  const outsideTop = h.outside(top);
  createImage(outsideTop, 64 * MiB);
  qemuIo(outsideTop, `write -P ${fill} 0 16M`);
  const base = (await sealTop(outsideTop))!.hash;
  execFileSync('qemu-img', ['bitmap', '--add', '-f', 'qcow2', outsideTop, 'kss-s-0']);
  return { top, outsideTop, base };
}

/** A checkpoint's file beside the layers, on `parent`; returns its path inside and outside. */
function checkpointFile(h: LibvirtHost, top: string, parent: string, n: number): { inside: string; outside: string } {
  const inside = join(layersDirOf(top), `checkpoint-${n}.part`);
  const outside = h.outside(inside);
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', layerFileName(parent), outside]);
  return { inside, outside };
}

/** Seals a checkpoint's file as a layer; returns its hash. */
async function sealCheckpoint(outside: string): Promise<string> {
  const hash = await sha256File(outside);
  renameSync(outside, join(layersDirOf(outside.replace(/\.layers\/[^/]+$/u, '')), layerFileName(hash)));
  return hash;
}

function ownBytes(image: string): number {
  const extents = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'qcow2', image], { encoding: 'utf8' })) as Array<{ depth: number; length: number }>;
  return extents.filter((extent) => extent.depth === 0).reduce((sum, extent) => sum + extent.length, 0);
}

describe('checkpoints of a running VM (backup API)', () => {
  it('freezes each interval into a layer on every disk, the guest running on, and leaves only the rest for the stop', async (t) => {
    if (!host) return t.skip('no libvirt');
    const h = host;
    const vda = await preparedDisk(h, 'ck-root', 0x11);
    const vdb = await preparedDisk(h, 'ck-home', 0x12);
    h.define('ck', tinyDomainXml('ck', { vda: vda.top, vdb: vdb.top }, false));
    h.mustVirsh('start', 'ck');
    const live = new LiveCheckpoints('ck', { uri: `qemu+unix:///system?socket=${h.outside('/run/libvirt/libvirt-sock')}` });
    await live.redefine('kss-s-0', Math.floor(Date.now() / 1000), [{ target: 'vda', file: 'x' }, { target: 'vdb', file: 'x' }]);

    h.guestIo('ck', 'write -P 0x22 1M 8M');
    h.guestIo('ck', 'write -P 0x23 2M 1M', 'virtio-disk1');
    const a1 = checkpointFile(h, vda.top, vda.base, 1);
    const b1 = checkpointFile(h, vdb.top, vdb.base, 1);
    await live.freeze('kss-s-0', 'kss-s-1', [{ target: 'vda', file: a1.inside }, { target: 'vdb', file: b1.inside }]);
    assert.equal(ownBytes(a1.outside), 8 * MiB, 'vda: the first checkpoint holds what the guest wrote');
    assert.equal(ownBytes(b1.outside), 1 * MiB, 'vdb: frozen in the same backup');
    qemuIo(a1.outside, 'read -P 0x11 0 1M', 'read -P 0x22 1M 8M', 'read -P 0x11 9M 7M');
    qemuIo(b1.outside, 'read -P 0x12 0 2M', 'read -P 0x23 2M 1M', 'read -P 0x12 3M 13M');
    const c1 = await sealCheckpoint(a1.outside);
    const d1 = await sealCheckpoint(b1.outside);
    await live.drop('kss-s-0');

    h.guestIo('ck', 'write -P 0x33 4M 4M');
    const a2 = checkpointFile(h, vda.top, c1, 2);
    const b2 = checkpointFile(h, vdb.top, d1, 2);
    await live.freeze('kss-s-1', 'kss-s-2', [{ target: 'vda', file: a2.inside }, { target: 'vdb', file: b2.inside }]);
    assert.equal(ownBytes(a2.outside), 4 * MiB, 'the second checkpoint holds only what came after the first');
    assert.equal(ownBytes(b2.outside), 0, 'a disk not written since has an empty checkpoint');
    qemuIo(a2.outside, 'read -P 0x22 1M 3M', 'read -P 0x33 4M 4M', 'read -P 0x22 8M 1M');
    const c2 = await sealCheckpoint(a2.outside);
    const d2 = await sealCheckpoint(b2.outside);
    await live.drop('kss-s-1');
    assert.deepEqual(await live.list(), ['kss-s-2']);

    // A backup that cannot start (its file is missing) leaves the VM running and its checkpoint marking.
    await assert.rejects(live.freeze('kss-s-2', 'kss-s-3', [{ target: 'vda', file: `${IMAGES}/missing.qcow2` }, { target: 'vdb' }]));
    assert.match(h.mustVirsh('domstate', 'ck'), /running/u);
    assert.deepEqual(await live.list(), ['kss-s-2']);

    h.guestIo('ck', 'write -P 0x44 20M 1M');
    h.guestIo('ck', 'write -P 0x45 30M 1M', 'virtio-disk1');
    h.mustVirsh('destroy', 'ck');
    const whole = { vda: guestDigest(vda.outsideTop), vdb: guestDigest(vdb.outsideTop) };
    assert.deepEqual(await moveTopOntoCheckpoint(vda.outsideTop, c2, 'kss-s-2'), { how: 'extracted', bytes: 1 * MiB });
    assert.deepEqual(await moveTopOntoCheckpoint(vdb.outsideTop, d2, 'kss-s-2'), { how: 'extracted', bytes: 1 * MiB });
    assert.deepEqual(await readLayerHashes(vda.outsideTop), [c2, c1, vda.base]);
    assert.deepEqual({ vda: guestDigest(vda.outsideTop), vdb: guestDigest(vdb.outsideTop) }, whole, 'every byte the guest wrote, through the checkpoints');
    qemuIo(vda.outsideTop, 'read -P 0x22 1M 3M', 'read -P 0x33 4M 4M', 'read -P 0x11 9M 7M', 'read -P 0x44 20M 1M', 'read -P 0 21M 11M');
    h.mustVirsh('checkpoint-delete', 'ck', 'kss-s-2', '--metadata');
  });
});

describe('backup and checkpoint XML', () => {
  it('names every disk, leaves out the ones not backed up, and escapes file names', () => {
    const disks = [{ target: 'vda', file: "/i/a'<b>.part" }, { target: 'sda' }];
    assert.equal(
      backupXml('kss-1', disks),
      "<domainbackup mode='push'><incremental>kss-1</incremental><disks><disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='kss-1'><target file='/i/a&#39;&#60;b&#62;.part'/><driver type='qcow2'/></disk><disk name='sda' backup='no'/></disks></domainbackup>",
    );
    assert.equal(checkpointXml('kss-2', disks), "<domaincheckpoint><name>kss-2</name><disks><disk name='vda' checkpoint='bitmap'/><disk name='sda' checkpoint='no'/></disks></domaincheckpoint>");
    assert.equal(
      redefineXml('kss-0', 1700000000, disks),
      "<domaincheckpoint><name>kss-0</name><creationTime>1700000000</creationTime><disks><disk name='vda' checkpoint='bitmap' bitmap='kss-0'/><disk name='sda' checkpoint='no'/></disks></domaincheckpoint>",
    );
  });

  it('reads virsh domjobinfo', () => {
    const job = parseJobInfo('Job type:         Unbounded   \nOperation:        Backup      \nFile processed:   8.000 MiB\nFile total:       1.500 GiB\n');
    assert.equal(job['Job type'], 'Unbounded');
    assert.equal(parseSize(job['File processed']), 8 * MiB);
    assert.equal(parseSize(job['File total']), 1.5 * 2 ** 30);
    assert.equal(parseSize(undefined), undefined);
  });
});
