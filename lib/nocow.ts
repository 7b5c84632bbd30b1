// Copy-on-write off for VM images on btrfs. A disk image is rewritten in place all the
// time; under btrfs's copy-on-write it fragments badly. `chattr +C` on a directory
// applies to files created in it afterwards (never to existing ones), so it is set where
// a directory is new or still empty; tops are also created with QEMU's nocow option.
import { readdir, statfs } from 'node:fs/promises';
import { runCommand } from './runner.js';

/** statfs's `type` of a btrfs filesystem. */
export const BTRFS_MAGIC = 0x9123683e;

export async function onBtrfs(path: string): Promise<boolean> {
  return (await statfs(path)).type === BTRFS_MAGIC;
}

/** Whether a file or directory has the NOCOW attribute (lsattr's `C`). */
export async function hasNoCow(path: string): Promise<boolean> {
  const { stdout } = await runCommand({ file: 'lsattr', args: ['-d', path] });
  return (stdout.split(' ')[0] ?? '').includes('C');
}

/** Sets NOCOW on a directory on btrfs when it is empty; returns whether it did. */
export async function markNoCowIfEmpty(dir: string): Promise<boolean> {
  if (!(await onBtrfs(dir)) || (await readdir(dir)).length > 0 || (await hasNoCow(dir))) return false;
  await runCommand({ file: 'chattr', args: ['+C', dir] });
  return true;
}
