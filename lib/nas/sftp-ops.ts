// The SSH transport's small operations over one SFTP session (sftp-session.ts) instead
// of a shell script each: no shell runs for them (with an sshd that serves SFTP
// in-process), and every one of them shares the session (one SSH channel for the
// process). The contract is lib/nas/transport.ts's; what differs from the scripts:
//
// - The compare-and-swap is several requests under the lock directory (mkdir is atomic,
//   and posix-rename replaces the file in one step), not one script: the lock is held
//   for a few round trips.
// - A directory cannot be synced over SFTP: a written file is fsynced before its
//   rename, but the rename itself is durable only when the NAS's file system commits
//   it (by default within 5 s on ext4, 30 s on btrfs; a NAS power cut before may undo it).
// - Symbolic links are never followed: a path is looked at with lstat, and only a
//   regular file is read.
import { createHash, randomBytes } from 'node:crypto';
import { IntegrityError } from '../errors.js';
import { MANIFEST_MAX_BYTES } from './format.js';
import { FX, IO_CHUNK, isDirectoryMode, isRegularMode, OPEN_FLAGS, SftpStatusError, type SftpAttrs, type SftpSession } from './sftp-session.js';
import { notRegularError, OWNER_MAX_BYTES, tooLargeError, type ExclusiveResult, type LockClaim, type NasEntry, type ReplaceResult } from './transport.js';

/** The most entries a listing reads (a year of layers is a few thousand): nothing read from the NAS is unbounded. */
const MAX_ENTRIES = 200_000;

const isMissing = (error: unknown) => error instanceof SftpStatusError && error.code === FX.NO_SUCH_FILE;

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash > 0 ? path.slice(0, slash) : '.';
}

function entryOf(name: string, attrs: SftpAttrs): NasEntry {
  return { name, size: attrs.size ?? 0, mtimeMs: (attrs.mtime ?? 0) * 1000, isDirectory: isDirectoryMode(attrs.permissions), isFile: isRegularMode(attrs.permissions) };
}

export class SftpOps {
  constructor(
    private readonly session: SftpSession,
    /** The NAS root, absolute, as the server sees it. */
    private readonly root: string,
    private readonly where: string,
  ) {}

  private full(path: string): string {
    return path === '.' ? this.root : `${this.root}/${path}`;
  }

  private async lstat(path: string): Promise<SftpAttrs | undefined> {
    return this.session.lstat(this.full(path)).catch((error: unknown) => {
      if (isMissing(error)) return undefined;
      throw error;
    });
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    const attrs = await this.lstat(path);
    if (attrs === undefined) return undefined;
    if (!isRegularMode(attrs.permissions)) throw notRegularError(this.where, path);
    if ((attrs.size ?? 0) > maxBytes) throw tooLargeError(this.where, path, maxBytes);
    const handle = await this.session.open(this.full(path), OPEN_FLAGS.READ);
    try {
      const parts: Buffer[] = [];
      let got = 0;
      // It may have grown since the lstat: read at most one byte past the limit.
      for (let part = await this.session.read(handle, 0, Math.min(IO_CHUNK, maxBytes + 1)); part !== undefined && part.length > 0; ) {
        parts.push(part);
        got += part.length;
        if (got > maxBytes) throw tooLargeError(this.where, path, maxBytes);
        part = await this.session.read(handle, got, Math.min(IO_CHUNK, maxBytes + 1 - got));
      }
      return Buffer.concat(parts);
    } finally {
      await this.session.close(handle).catch(() => undefined);
    }
  }

  /** Writes a new file (it must not exist), fsynced; the parents must exist. */
  private async writeNew(path: string, data: Buffer): Promise<void> {
    const handle = await this.session.open(this.full(path), OPEN_FLAGS.WRITE | OPEN_FLAGS.CREATE | OPEN_FLAGS.EXCLUSIVE, { permissions: 0o600 });
    try {
      const writes: Array<Promise<void>> = [];
      for (let at = 0; at < data.length; at += IO_CHUNK) writes.push(this.session.write(handle, at, data.subarray(at, at + IO_CHUNK)));
      await Promise.all(writes);
      await this.session.fsync(handle);
    } finally {
      await this.session.close(handle).catch(() => undefined);
    }
  }

  /** mkdir -p of a directory under the root. */
  private async makeDirs(dir: string): Promise<void> {
    if (dir === '.') return;
    const attrs = await this.lstat(dir);
    if (attrs !== undefined) {
      if (!isDirectoryMode(attrs.permissions)) throw new IntegrityError(`${this.where}/${dir} is not a directory`, { remedy: 'move it aside on the NAS (nothing of kvm-snapshot-sync makes it)' });
      return;
    }
    await this.makeDirs(parentOf(dir));
    await this.session.mkdir(this.full(dir)).catch(async (error: unknown) => {
      if (!isDirectoryMode((await this.lstat(dir))?.permissions)) throw error; // made by another caller meanwhile: fine
    });
  }

  async writeFileAtomic(path: string, data: Buffer): Promise<void> {
    await this.makeDirs(parentOf(path));
    const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    try {
      await this.writeNew(temp, data);
      await this.session.posixRename(this.full(temp), this.full(path));
    } catch (error) {
      await this.session.remove(this.full(temp)).catch(() => undefined);
      throw error;
    }
  }

  async stat(path: string): Promise<NasEntry | undefined> {
    const attrs = await this.lstat(path);
    return attrs === undefined ? undefined : entryOf(path.slice(path.lastIndexOf('/') + 1), attrs);
  }

  async list(dir: string): Promise<NasEntry[]> {
    const attrs = await this.lstat(dir);
    if (!isDirectoryMode(attrs?.permissions)) return [];
    const handle = await this.session.opendir(this.full(dir));
    const entries: NasEntry[] = [];
    try {
      for (let batch = await this.session.readdir(handle); batch !== undefined; batch = await this.session.readdir(handle)) {
        for (const { filename, attrs: entry } of batch) if (filename !== '.' && filename !== '..') entries.push(entryOf(filename, entry));
        if (entries.length > MAX_ENTRIES) {
          throw new IntegrityError(`${this.where}/${dir} lists more than ${MAX_ENTRIES} entries, more than kvm-snapshot-sync ever makes; it was not read`, {
            remedy: 'something else fills that directory on the NAS: move what is not ours aside',
          });
        }
      }
    } finally {
      await this.session.close(handle).catch(() => undefined);
    }
    return entries;
  }

  async remove(path: string): Promise<void> {
    const attrs = await this.lstat(path);
    if (attrs === undefined) return;
    if (isDirectoryMode(attrs.permissions)) {
      for (const entry of await this.list(path)) await this.remove(`${path}/${entry.name}`);
      await this.session.rmdir(this.full(path)).catch((error: unknown) => {
        if (!isMissing(error)) throw error;
      });
    } else {
      await this.session.remove(this.full(path)).catch((error: unknown) => {
        if (!isMissing(error)) throw error;
      });
    }
  }

  async rename(from: string, to: string): Promise<boolean> {
    if ((await this.lstat(from)) === undefined) return false;
    await this.session.posixRename(this.full(from), this.full(to));
    return true;
  }

  /**
   * Before an upload (as remote-scripts.ts prepareUploadScript): 'published' when the
   * target exists; else makes the directories and names the largest partial upload
   * (`<partPrefix>` or `<partPrefix>.*`) an earlier attempt left.
   */
  async prepareUpload(partPrefix: string, target: string): Promise<'published' | { partSize: number; claim: string | undefined }> {
    if ((await this.lstat(target)) !== undefined) return 'published';
    const dir = parentOf(partPrefix);
    await this.makeDirs(dir);
    await this.makeDirs(parentOf(target));
    const base = dir === '.' ? partPrefix : partPrefix.slice(dir.length + 1);
    let best: NasEntry | undefined;
    for (const entry of await this.list(dir)) {
      if (entry.isFile && (entry.name === base || entry.name.startsWith(`${base}.`)) && (best === undefined || entry.size > best.size)) best = entry;
    }
    return { partSize: best?.size ?? 0, claim: best === undefined ? undefined : `${dir === '.' ? '' : `${dir}/`}${best.name}` };
  }

  /** The NAS's clock, from the mtime of a file made now. */
  private async nasNow(dir: string): Promise<number> {
    const probe = `${dir === '.' ? '' : `${dir}/`}.kss-clock-${randomBytes(6).toString('hex')}`;
    const handle = await this.session.open(this.full(probe), OPEN_FLAGS.WRITE | OPEN_FLAGS.CREATE | OPEN_FLAGS.EXCLUSIVE, { permissions: 0o600 });
    try {
      return ((await this.session.fstat(handle)).mtime ?? 0) * 1000;
    } finally {
      await this.session.close(handle).catch(() => undefined);
      await this.session.remove(this.full(probe)).catch(() => undefined);
    }
  }

  async mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    await this.makeDirs(parentOf(path));
    try {
      await this.session.mkdir(this.full(path), 0o700);
    } catch (error) {
      if (!(error instanceof SftpStatusError) || (error.code !== FX.FAILURE && error.code !== FX.PERMISSION_DENIED)) throw error;
      const dir = await this.lstat(path);
      if (dir === undefined && error.code === FX.FAILURE) return { created: false, ownerData: undefined, ageMs: 0 }; // released in between: try again soon
      if (dir === undefined || !isDirectoryMode(dir.permissions)) throw error;
      const owner = await this.readFile(`${path}/${ownerName}`, OWNER_MAX_BYTES).catch(() => undefined);
      const ownerTime = (await this.lstat(`${path}/${ownerName}`).catch(() => undefined))?.mtime;
      const newest = Math.max(dir.mtime ?? 0, ownerTime ?? 0) * 1000;
      return { created: false, ownerData: owner, ageMs: (await this.nasNow(parentOf(path))) - newest };
    }
    await this.writeNew(`${path}/${ownerName}`, ownerData);
    return { created: true };
  }

  async replaceIfUnchanged(path: string, data: Buffer, guard: { expectedSha256: string | null; required: string[]; remove?: string[]; lock: LockClaim }): Promise<ReplaceResult> {
    const { lock } = guard;
    const taken = await this.mkdirExclusive(lock.path, lock.ownerName, lock.ownerData);
    if (!taken.created) return { outcome: 'locked', ownerData: taken.ownerData, ageMs: taken.ageMs };
    try {
      for (const required of guard.required) if ((await this.lstat(required)) === undefined) return { outcome: 'missing', path: required };
      const current = await this.readFile(path, MANIFEST_MAX_BYTES);
      const currentSha256 = current === undefined ? null : createHash('sha256').update(current).digest('hex');
      if (currentSha256 !== guard.expectedSha256) return { outcome: 'changed' };
      for (const gone of guard.remove ?? []) {
        await this.session.remove(this.full(gone)).catch((error: unknown) => {
          if (!isMissing(error)) throw error;
        });
      }
      await this.writeFileAtomic(path, data);
      return { outcome: 'replaced' };
    } finally {
      // Removed only while it still holds our owner data (it could have been broken as stale).
      const owner = await this.readFile(`${lock.path}/${lock.ownerName}`, OWNER_MAX_BYTES).catch(() => undefined);
      if (owner?.equals(lock.ownerData)) await this.remove(lock.path).catch(() => undefined);
    }
  }
}
