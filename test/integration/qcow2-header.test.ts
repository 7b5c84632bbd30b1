// The header check of pulled layers, on images made by the real qemu-img: what ours
// look like passes, and every way a header can name another file is refused.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { layerHeaderProblem, parseQcow2Header, readLayerHeader } from '../../lib/qcow2-header.js';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';

const PARENT = `${'a'.repeat(64)}.qcow2`;

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'kss-header-'));
  createImage(join(dir, PARENT), 16 * MiB);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
async function problemOf(name: string, parent: string | undefined): Promise<string | undefined> {
  try {
    return layerHeaderProblem(parseQcow2Header(await readLayerHeader(join(dir, name))), parent);
  } catch (error) {
    return (error as Error).message;
  }
}

describe('the header of a pulled layer', () => {
  it('passes a base and an overlay as kvm-snapshot-sync makes them', async () => {
    qemuIo(join(dir, PARENT), 'write -P 0x11 0 1M');
    assert.equal(await problemOf(PARENT, undefined), undefined);
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', PARENT, 'child.qcow2');
    qemuIo(join(dir, 'child.qcow2'), 'write -P 0x22 1M 1M');
    assert.equal(await problemOf('child.qcow2', PARENT), undefined);
    // A merged layer: a safe rebase onto the parent.
    qemuImg('rebase', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', PARENT, 'child.qcow2');
    assert.equal(await problemOf('child.qcow2', PARENT), undefined);
  });

  it("refuses a backing file that is not its parent layer (another VM's disk)", async () => {
    writeFileSync(join(dir, 'other-vm.raw'), Buffer.alloc(MiB, 0x5a));
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', join(dir, 'other-vm.raw'), 'evil.qcow2');
    assert.match((await problemOf('evil.qcow2', PARENT)) ?? '', /its backing file is ".*other-vm\.raw", not its parent layer a{64}\.qcow2/u);
    assert.match((await problemOf('evil.qcow2', undefined)) ?? '', /names a backing file .* but its manifest says it is a base/u);
  });

  it('refuses the parent named in another format, or with no format recorded', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', PARENT, 'as-raw.qcow2');
    assert.match((await problemOf('as-raw.qcow2', PARENT)) ?? '', /its backing format is "raw", not qcow2/u);
    // No format recorded: the backing format extension renamed to a type QEMU ignores.
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', PARENT, 'no-format.qcow2');
    const bytes = readFileSync(join(dir, 'no-format.qcow2'));
    const at = bytes.indexOf(Buffer.from('e2792aca', 'hex'), 104);
    assert.ok(at > 0 && at % 8 === 0, 'the backing format extension is there to remove');
    bytes.writeUInt32BE(0x6b737321, at);
    writeFileSync(join(dir, 'no-format.qcow2'), bytes);
    assert.match((await problemOf('no-format.qcow2', PARENT)) ?? '', /its backing format is not recorded, not qcow2/u);
  });

  it('refuses a base without a backing file where a parent is named', async () => {
    createImage(join(dir, 'standalone.qcow2'), MiB);
    assert.match((await problemOf('standalone.qcow2', PARENT)) ?? '', /its backing file is none, not its parent layer/u);
  });

  it('refuses an external data file, whatever it points at', async () => {
    writeFileSync(join(dir, 'host-file'), Buffer.alloc(MiB));
    qemuImg('create', '-q', '-f', 'qcow2', '-o', `data_file=${join(dir, 'host-file')}`, 'data-file.qcow2', String(MiB));
    assert.equal(await problemOf('data-file.qcow2', undefined), 'it names an external data file');
  });

  it('refuses an encrypted image', async () => {
    // crypt_method set in the header (1: AES, 2: LUKS); qemu-img's LUKS creation is slow and flaky on a loaded machine.
    createImage(join(dir, 'encrypted.qcow2'), MiB);
    const bytes = readFileSync(join(dir, 'encrypted.qcow2'));
    bytes.writeUInt32BE(2, 32);
    writeFileSync(join(dir, 'encrypted.qcow2'), bytes);
    assert.equal(await problemOf('encrypted.qcow2', undefined), 'it is encrypted');
  });

  it('refuses what is not a qcow2 image at all, or is cut short', async () => {
    writeFileSync(join(dir, 'raw.img'), Buffer.alloc(64 * 1024, 0x33));
    assert.match((await problemOf('raw.img', undefined)) ?? '', /not a qcow2 image/u);
    writeFileSync(join(dir, 'short.qcow2'), readFileSync(join(dir, PARENT)).subarray(0, 40));
    assert.match((await problemOf('short.qcow2', undefined)) ?? '', /ends inside its header/u);
  });

  it('refuses a backing file name that lies outside the first cluster', async () => {
    qemuImg('create', '-q', '-f', 'qcow2', '-F', 'qcow2', '-b', PARENT, 'moved.qcow2');
    const bytes = readFileSync(join(dir, 'moved.qcow2'));
    bytes.writeBigUInt64BE(BigInt(10 * MiB), 8);
    writeFileSync(join(dir, 'moved.qcow2'), bytes);
    assert.match((await problemOf('moved.qcow2', PARENT)) ?? '', /backing file name lies outside its first cluster/u);
  });
});
