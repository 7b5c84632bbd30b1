// On btrfs: kss enable sets NOCOW (chattr +C) on the new layers directory, the tops are
// created NOCOW, and kss doctor warns about an image directory without it. A real btrfs,
// loop-mounted.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { TestHost } from '../helpers/hosts.js';
import { requireTools } from '../helpers/tools.js';

let root: string | undefined;
let mount: string | undefined;

before((t) => {
  if (!requireTools(t as unknown as TestContext, 'qemu-img', 'qemu-io', 'mkfs.btrfs', 'chattr', 'lsattr')) return;
  root = mkdtempSync(join(tmpdir(), 'kss-btrfs-'));
  const image = join(root, 'fs.img');
  execFileSync('truncate', ['-s', '256M', image]);
  execFileSync('mkfs.btrfs', ['-q', image]);
  mount = join(root, 'mnt');
  mkdirSync(mount);
  execFileSync('mount', ['-o', 'loop', image, mount]);
});
after(() => {
  if (mount) spawnSync('umount', [mount]);
  if (root) rmSync(root, { recursive: true, force: true });
});

const attrs = (path: string) => execFileSync('lsattr', ['-d', path], { encoding: 'utf8' }).split(' ')[0] as string;

describe('NOCOW on btrfs', () => {
  it('kss enable makes the new layers directory and the tops NOCOW; doctor warns about the image directory', async (t) => {
    if (!mount && !requireTools(t, 'mkfs.btrfs')) return;
    const host = new TestHost('desk', join(mount as string, 'desk'), join(mount as string, 'nas'));
    const disk = host.disk('vm.qcow2');
    createImage(disk, 16 * MiB);
    qemuIo(disk, 'write -P 0x21 0 1M');
    const expected = guestDigest(disk);
    const enabled = await enableDisks('vm', { vda: disk }, { config: await host.config(), log: host.quietLog() });
    assert.deepEqual(enabled.nocow, [`${disk}.layers`]);
    assert.match(attrs(`${disk}.layers`), /C/u, 'the layers directory');
    assert.match(attrs(disk), /C/u, 'the top the guest writes');
    assert.equal(guestDigest(disk), expected);

    const doctor = host.kss('doctor');
    assert.match(doctor.stdout, new RegExp(`^WARN  images    ${host.images} is on btrfs without NOCOW.*\\n      fix: chattr \\+C ${host.images}`, 'mu'));
  });
});
