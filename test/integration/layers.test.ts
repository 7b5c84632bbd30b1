// The layer engine against the real qemu-img and qemu-io: every operation keeps every
// guest-visible byte, on paths that try hard to be misread.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, it, type TestContext } from 'node:test';
import { DiskStateError, IntegrityError } from '../../lib/errors.js';
import { layerFileName } from '../../lib/file-names.js';
import { sha256File } from '../../lib/hash.js';
import {
  checkImage,
  createTop,
  hasOwnData,
  layersDirOf,
  mergeLayers,
  readChain,
  readLayerHashes,
  sealTop,
  verifyLayer,
} from '../../lib/layers.js';
import { MiB, createImage, guestDigest, qemuIo, sameGuestContent } from '../helpers/disks.js';
import { requireTools } from '../helpers/tools.js';

let root: string;
let top: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-layers-'));
  const dir = join(root, `-images 'q" é`);
  mkdirSync(dir);
  // A leading dash, quotes, a space, non-ASCII and a colon (read as a protocol prefix
  // if a backing reference were written naively).
  top = join(dir, `-disk 'x" é:1.qcow2`);
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function ready(t: TestContext): boolean {
  return requireTools(t, 'qemu-img', 'qemu-io');
}

function layerPath(hash: string): string {
  return join(layersDirOf(top), layerFileName(hash));
}

describe('layer engine on real qemu-img', () => {
  it('seals, rotates and merges without changing a guest-visible byte', async (t) => {
    if (!ready(t)) return;
    const random = join(root, 'random.bin');
    writeFileSync(random, randomBytes(2 * MiB));

    createImage(top, 64 * MiB);
    qemuIo(top, 'write -P 0x11 0 4M', `write -s ${random} 8M 2M`);
    const base = guestDigest(top);

    const r0 = await sealTop(top);
    assert.ok(r0, 'a top with data is sealed');
    assert.equal(r0.parent, undefined, 'the first layer is a base');
    assert.equal(await sha256File(layerPath(r0.hash)), r0.hash, 'a layer is named by the SHA-256 of its bytes');
    assert.equal(statSync(layerPath(r0.hash)).mode & 0o777, 0o440, 'a sealed layer is read-only, and not world-readable');
    assert.equal(await hasOwnData(top), false, 'the new top is empty');
    assert.deepEqual(await readLayerHashes(top), [r0.hash]);
    assert.equal(guestDigest(top), base);

    // Sub-cluster data, zeroes written over base data, data at the end of the disk.
    qemuIo(top, 'write -P 0x22 1M 512', 'write -z 2M 64k', 'write -P 0x33 60M 1M');
    const second = guestDigest(top);
    const r1 = await sealTop(top);
    assert.ok(r1);
    assert.equal(r1.parent, r0.hash);
    assert.equal(guestDigest(top), second);

    const topBefore = statSync(top);
    assert.equal(await sealTop(top), undefined, 'nothing written: nothing sealed');
    assert.equal(statSync(top).ino, topBefore.ino, 'and the top is left as it was');

    qemuIo(top, 'write -P 0x44 3M 1M', 'discard 8M 64k');
    const third = guestDigest(top);
    const r2 = await sealTop(top);
    assert.ok(r2);
    assert.deepEqual(await readLayerHashes(top), [r2.hash, r1.hash, r0.hash]);
    assert.equal(guestDigest(top), third);

    // Merge r1 and r2 into one layer on r0: same content, two levels instead of three.
    const merged = await mergeLayers(layersDirOf(top), r2.hash, r0.hash);
    assert.ok(sameGuestContent(layerPath(merged), layerPath(r2.hash)));
    assert.deepEqual((await readChain(layerPath(merged))).map((e) => e.path.split('/').pop()), [
      layerFileName(merged),
      layerFileName(r0.hash),
    ]);
    assert.equal(await sha256File(layerPath(merged)), merged);
    assert.ok(existsSync(layerPath(r1.hash)) && existsSync(layerPath(r2.hash)), 'merged layers are not removed');

    // Merge everything into a new standalone base.
    const flat = await mergeLayers(layersDirOf(top), r2.hash, undefined);
    assert.equal((await readChain(layerPath(flat))).length, 1);
    assert.ok(sameGuestContent(layerPath(flat), layerPath(r2.hash)));

    // Rotate the (empty) top onto the merged layer.
    await createTop(top, merged);
    assert.deepEqual(await readLayerHashes(top), [merged, r0.hash]);
    assert.equal(guestDigest(top), third);
    qemuIo(top, 'read -P 0x11 0 1M', 'read -P 0x22 1M 512', 'read -P 0 2M 64k', 'read -P 0x44 3M 1M', 'read -P 0x33 60M 1M');

    for (const hash of [r0.hash, r1.hash, r2.hash, merged, flat]) {
      assert.deepEqual(await checkImage(layerPath(hash)), { corruptions: 0, leaks: 0, checkErrors: 0 });
    }
    const leftovers = readdirSync(layersDirOf(top)).filter((name) => !/^[0-9a-f]{64}\.qcow2$/u.test(name));
    assert.deepEqual(leftovers, []);
  });

  it('refuses to replace a top that holds unsealed writes', async (t) => {
    if (!ready(t)) return;
    createImage(top, 16 * MiB);
    qemuIo(top, 'write -P 0x01 0 1M');
    const base = await sealTop(top);
    assert.ok(base);
    qemuIo(top, 'write -P 0x02 0 64k');
    const before = guestDigest(top);
    await assert.rejects(createTop(top, base.hash), DiskStateError);
    assert.equal(guestDigest(top), before, 'the writes are still there');
  });

  it('refuses to merge onto a layer that is not below', async (t) => {
    if (!ready(t)) return;
    createImage(top, 16 * MiB);
    qemuIo(top, 'write -P 0x01 0 1M');
    const a = await sealTop(top);
    qemuIo(top, 'write -P 0x02 0 1M');
    const b = await sealTop(top);
    assert.ok(a && b);
    await assert.rejects(mergeLayers(layersDirOf(top), a.hash, b.hash), DiskStateError);
  });

  it('detects a layer whose bytes do not match its name', async (t) => {
    if (!ready(t)) return;
    createImage(top, 16 * MiB);
    qemuIo(top, 'write -P 0x01 0 1M');
    const sealed = await sealTop(top);
    assert.ok(sealed);
    await verifyLayer(layersDirOf(top), sealed.hash);
    chmodSync(layerPath(sealed.hash), 0o644);
    qemuIo(layerPath(sealed.hash), 'write -P 0x66 0 512');
    await assert.rejects(verifyLayer(layersDirOf(top), sealed.hash), IntegrityError);
  });

  it('rejects a chain that is not made of sealed layers', async (t) => {
    if (!ready(t)) return;
    const foreign = join(root, 'foreign.qcow2');
    createImage(foreign, 16 * MiB);
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', foreign, top]);
    await assert.rejects(readLayerHashes(top), DiskStateError);
    qemuIo(top, 'write -P 0x01 0 64k');
    await assert.rejects(sealTop(top), DiskStateError);
    assert.ok(existsSync(top), 'and leaves the top where it was');
  });

  const steps = ['seal:move-aside', 'seal:rebase-header', 'seal:hash', 'seal:publish', 'seal:new-top', 'create-top:overlay', 'create-top:rename', 'seal:drop-incoming'];
  for (const step of steps) {
    it(`finishes a seal killed with SIGKILL before ${step}`, async (t) => {
      if (!ready(t)) return;
      createImage(top, 16 * MiB);
      qemuIo(top, 'write -P 0x01 0 2M');
      const base = await sealTop(top);
      assert.ok(base);
      qemuIo(top, 'write -P 0x02 1M 2M', 'write -z 8M 64k');
      const expected = guestDigest(top);

      const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/seal-until.ts', top, step], {
        encoding: 'utf8',
      });
      assert.equal(child.signal, 'SIGKILL', `the seal was killed (stdout: ${child.stdout} stderr: ${child.stderr})`);

      const result = await sealTop(top);
      assert.ok(result, 'the interrupted seal is finished and reported');
      assert.equal(result.parent, base.hash);
      assert.deepEqual(await readLayerHashes(top), [result.hash, base.hash]);
      assert.equal(await hasOwnData(top), false);
      assert.equal(guestDigest(top), expected, 'no guest-visible byte changed');
      assert.equal(await sealTop(top), undefined, 'and nothing is left to seal');
      assert.deepEqual(
        readdirSync(layersDirOf(top)).sort(),
        [layerFileName(base.hash), layerFileName(result.hash)].sort(),
      );
      assert.deepEqual(readdirSync(join(top, '..')).filter((name) => name.includes('.new-')), []);
    });
  }
});
