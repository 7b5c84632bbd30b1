// Guest-visible disk content, through real qemu-img and qemu-io: write patterns into an
// image (as a guest would, through its chain) and read the whole content back.
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MiB = 2 ** 20;

/** Runs qemu-io commands against an image; fails if any I/O or pattern check failed. */
export function qemuIo(image: string, ...commands: string[]): string {
  return qemuIoAs('qcow2', image, ...commands);
}

/** qemuIo on an image of the given format. */
export function qemuIoAs(format: 'qcow2' | 'raw', image: string, ...commands: string[]): string {
  const args = commands.flatMap((command) => ['-c', command]);
  const output = execFileSync('qemu-io', ['-f', format, ...args, image], { encoding: 'utf8' });
  if (/Pattern verification failed|error|failed/iu.test(output)) {
    throw new Error(`qemu-io ${commands.join('; ')} on ${image}:\n${output}`);
  }
  return output;
}

/** Creates a standalone qcow2 image. */
export function createImage(path: string, size: number): void {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
}

/**
 * A standalone qcow2 image holding `size` random bytes (a pulled layer must be a qcow2
 * image with a sound header); returns the SHA-256 of its file.
 */
export function randomQcow2(path: string, size: number): string {
  const dir = mkdtempSync(join(tmpdir(), 'kss-random-'));
  try {
    const raw = join(dir, 'random.raw');
    writeFileSync(raw, randomBytes(size));
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, path]);
    return createHash('sha256').update(readFileSync(path)).digest('hex');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** SHA-256 of everything a guest would read from the disk: the chain flattened to raw. */
export function guestDigest(image: string, format: 'qcow2' | 'raw' = 'qcow2'): string {
  const dir = mkdtempSync(join(tmpdir(), 'kss-digest-'));
  try {
    const raw = join(dir, 'disk.raw');
    execFileSync('qemu-img', ['convert', '-f', format, '-O', 'raw', image, raw]);
    return createHash('sha256').update(readFileSync(raw)).digest('hex');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * guestDigest of what the guest would read after the given qemu-io commands (writes),
 * applied to a raw copy of the disk's content: the image itself is not changed.
 */
export function guestDigestAfter(image: string, ...commands: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'kss-digest-'));
  try {
    const raw = join(dir, 'disk.raw');
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
    qemuIoAs('raw', raw, ...commands);
    return createHash('sha256').update(readFileSync(raw)).digest('hex');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether two images (with their chains) show the same guest content. */
export function sameGuestContent(a: string, b: string): boolean {
  try {
    execFileSync('qemu-img', ['compare', '-q', a, b]);
    return true;
  } catch {
    return false;
  }
}
