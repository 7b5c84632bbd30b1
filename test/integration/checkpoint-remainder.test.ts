// What a stop seals after a session with checkpoints: the top moved onto the newest
// checkpoint's layer, holding only what was written since, with every guest-visible
// byte kept (real qemu-img, qemu-io and qemu-storage-daemon).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, it, type TestContext } from 'node:test';
import { moveTopOntoCheckpoint, readBitmaps } from '../../lib/checkpoint/remainder.js';
import { copyBitmapClusters } from '../../lib/checkpoint/offline-backup.js';
import { layerFileName } from '../../lib/file-names.js';
import { sha256File } from '../../lib/hash.js';
import { layersDirOf, readLayerHashes, sealTop } from '../../lib/layers.js';
import { runCommand, type Runner } from '../../lib/runner.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { requireTools } from '../helpers/tools.js';

let root: string;
let top: string;

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-remainder-'));
  const dir = join(root, `-images, 'q" é`);
  mkdirSync(dir);
  top = join(dir, `-disk, 'x" é:1.qcow2`); // a comma too: qemu-storage-daemon's options are split at commas
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function ready(t: TestContext): boolean {
  return requireTools(t, 'qemu-img', 'qemu-io', 'qemu-storage-daemon');
}

function addBitmap(name: string): void {
  execFileSync('qemu-img', ['bitmap', '--add', '-f', 'qcow2', top, name]);
}

/** Bytes the top holds itself (qemu-img map, depth 0). */
function ownBytes(image: string): number {
  const extents = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'qcow2', image], { encoding: 'utf8' })) as Array<{ depth: number; length: number }>;
  return extents.filter((extent) => extent.depth === 0).reduce((sum, extent) => sum + extent.length, 0);
}

/**
 * A session with one checkpoint, made the way a running VM's backup makes it: the
 * clusters bitmap b0 marks, copied into a new layer on the session's base layer; b1
 * (created with it) marks what comes after. Returns the checkpoint layer's hash.
 */
async function sessionWithCheckpoint(): Promise<{ base: string; checkpoint: string }> {
  createImage(top, 64 * MiB);
  qemuIo(top, 'write -P 0x11 0 16M');
  const base = (await sealTop(top))!.hash;
  addBitmap('b0');
  qemuIo(top, 'write -P 0x22 1M 8M');
  const part = join(layersDirOf(top), 'checkpoint.part');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', layerFileName(base), part]);
  assert.equal(await copyBitmapClusters({ source: top, bitmap: 'b0', target: part }), 8 * MiB, 'the backup copies what b0 marks');
  addBitmap('b1');
  const checkpoint = await sha256File(part);
  renameSync(part, join(layersDirOf(top), layerFileName(checkpoint)));
  const random = join(root, 'random.bin');
  writeFileSync(random, randomBytes(2 * MiB));
  qemuIo(top, 'write -P 0x33 4M 4M', `write -s ${random} 40M 2M`);
  return { base, checkpoint };
}

describe('the remainder after checkpoints', () => {
  it('cuts only what was written since the checkpoint out of the top, keeping every byte', async (t) => {
    if (!ready(t)) return;
    const { base, checkpoint } = await sessionWithCheckpoint();
    const before = guestDigest(top);
    assert.equal(ownBytes(top), 10 * MiB, 'the top holds the whole session');
    // A leftover of a run killed in the middle is removed.
    const stray = join(dirname(top), `.${basename(top)}.remainder-dead`);
    writeFileSync(stray, 'x');

    const outcome = await moveTopOntoCheckpoint(top, checkpoint, 'b1');
    assert.deepEqual(outcome, { how: 'extracted', bytes: 6 * MiB });
    assert.deepEqual(await readLayerHashes(top), [checkpoint, base], 'the top stands on the checkpoint');
    assert.equal(guestDigest(top), before, 'the guest reads what it wrote');
    assert.equal(ownBytes(top), 6 * MiB, 'the top holds only what came after the checkpoint');
    qemuIo(top, 'read -P 0x11 0 1M', 'read -P 0x22 1M 3M', 'read -P 0x33 4M 4M', 'read -P 0x22 8M 1M', 'read -P 0x11 9M 7M');
    assert.deepEqual(await readBitmaps(top), [], 'the new top carries no bitmap into its layer');
    assert.ok(!readdirSync(dirname(top)).some((name) => name.includes('.remainder-')), 'no temporary file is left');
    assert.deepEqual(await moveTopOntoCheckpoint(top, checkpoint, 'b1'), { how: 'already' }, 'a second run changes nothing');
  });

  it('without a sound bitmap (QEMU died), points the whole top at the checkpoint, keeping every byte', async (t) => {
    if (!ready(t)) return;
    const { base, checkpoint } = await sessionWithCheckpoint();
    // A process that dies with the image open leaves its bitmaps marked in use.
    spawnSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 20M 1M', '-c', 'abort', top], { stdio: 'ignore' });
    assert.ok((await readBitmaps(top)).every((bitmap) => bitmap.inUse), 'the bitmaps are marked in use');
    const before = guestDigest(top);

    const outcome = await moveTopOntoCheckpoint(top, checkpoint, 'b1');
    assert.equal(outcome.how, 'rebased');
    assert.deepEqual(await readLayerHashes(top), [checkpoint, base]);
    assert.equal(guestDigest(top), before, 'the guest reads what it wrote');
    assert.deepEqual(await readBitmaps(top), [], 'the untrusted bitmaps are removed');
  });

  it('leaves the top whole when cut before the rename, and falls back to the whole top when the copy fails', async (t) => {
    if (!ready(t)) return;
    const { base, checkpoint } = await sessionWithCheckpoint();
    const before = guestDigest(top);
    for (const step of ['remainder:create', 'remainder:copy', 'remainder:rename']) {
      const deps = {
        run: runCommand,
        onStep: (at: string) => {
          if (at === step) throw new Error(`cut at ${at}`);
        },
      };
      await assert.rejects(moveTopOntoCheckpoint(top, checkpoint, 'b1', deps), /cut at/u);
      assert.deepEqual(await readLayerHashes(top), [base], `cut at ${step}: the top is the old one`);
      assert.equal(guestDigest(top), before, `cut at ${step}: nothing is lost`);
    }
    const fullDisk: Runner = (command, options) => (command.args[0] === 'create' ? Promise.reject(new Error('disk full')) : runCommand(command, options));
    await assert.rejects(moveTopOntoCheckpoint(top, checkpoint, 'b1', { run: fullDisk }), /disk full/u);
    assert.equal(guestDigest(top), before, 'a failed create loses nothing');
    // A copy that fails (here: the daemon is not installed) leaves the whole top to seal.
    const saved = process.env.PATH;
    process.env.PATH = '/nonexistent';
    const noDaemon: Runner = (command, options) => runCommand({ ...command, file: `/usr/bin/${command.file}` }, options);
    const outcome = await moveTopOntoCheckpoint(top, checkpoint, 'b1', { run: noDaemon }).finally(() => (process.env.PATH = saved));
    assert.equal(outcome.how, 'rebased');
    assert.match((outcome as { why: string }).why, /qemu-storage-daemon is not installed/u);
    assert.deepEqual(await readLayerHashes(top), [checkpoint, base]);
    assert.equal(guestDigest(top), before, 'the whole top, on the checkpoint, reads the same');
  });
});
