// The NAS as a directory: a mounted share (NFS, SMB) or a local disk (see
// lib/nas/transport.ts for the contract).
//
// Bytes are hashed as they are read from the local layer, and the upload is flushed to
// the share before it is published; the share is trusted to store what it acknowledged
// (reading it back through a client cache would prove nothing). An interrupted upload
// resumes only after its kept prefix is read back and found equal to the local one.
//
// A share is written by others too, so nothing here follows a symbolic link: every
// component of a path below the root is checked with lstat before use, a file is
// opened with O_NOFOLLOW (and O_NONBLOCK, so that a FIFO cannot hang an open), and an
// opened file must be a regular file that resolves inside the NAS root. Streams on an
// opened file use its descriptor (`fd`), not the FileHandle's own streams, whose
// references would keep close() waiting forever.
import { createHash, type Hash } from 'node:crypto';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, readlink, realpath, rename, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeFileAtomic, fsyncDir } from '../durable-fs.js';
import { sha256Of } from '../hash.js';
import { MANIFEST_MAX_BYTES } from './format.js';
import { IntegrityError, NasFullError, NasUnreachableError } from '../errors.js';
import { receiveFile } from './receive-file.js';
import { stallError, type StallReport } from './stall.js';
import { notRegularError, OWNER_MAX_BYTES, tooLargeError, type ExclusiveResult, type LockClaim, type NasEntry, type NasTransport, type ReplaceResult, type TransferOptions, type TransferResult } from './transport.js';

/** Opening never follows a final symbolic link, and never waits on a FIFO. */
const NO_FOLLOW = constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Published layers and uploads: readable by their owner and group only (guest data). */
const LAYER_MODE = 0o440;
/** The file whose mtime tells the NAS's clock. */
const CLOCK_PROBE = '.kss-clock';

export interface DirTransportOptions {
  root: string;
  /** Deadline of every small operation: a hung mount must not hang the hook. */
  opTimeoutMs: number;
  /** A stream that moves no byte for this long fails. */
  stallTimeoutMs: number;
}

export class DirTransport implements NasTransport {
  readonly where: string;
  private realRoot: Promise<string> | undefined;

  constructor(private readonly options: DirTransportOptions) {
    this.where = options.root;
  }

  readFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    return this.small(`read ${path}`, () => this.readBounded(path, maxBytes));
  }

  writeFileAtomic(path: string, data: Buffer): Promise<void> {
    return this.small(`write ${path}`, async () => {
      const full = await this.resolve(path);
      await mkdir(dirname(full), { recursive: true });
      await writeFileAtomic(full, data);
    });
  }

  stat(path: string): Promise<NasEntry | undefined> {
    return this.small(`stat ${path}`, async () => this.entry(await this.resolve(path)));
  }

  list(dir: string): Promise<NasEntry[]> {
    return this.small(`list ${dir}`, async () => {
      const full = await this.resolve(dir);
      const names = await readdir(full).catch((error: unknown) => {
        if (isCode(error, 'ENOENT')) return [] as string[];
        throw error;
      });
      const entries = await Promise.all(names.map((name) => this.entry(join(full, name))));
      return entries.filter((entry): entry is NasEntry => entry !== undefined);
    });
  }

  remove(path: string): Promise<void> {
    // rm removes a symbolic link inside the tree, never what it points to.
    return this.small(`remove ${path}`, async () => rm(await this.resolve(path), { recursive: true, force: true }));
  }

  rename(from: string, to: string): Promise<boolean> {
    return this.small(`rename ${from}`, async () => {
      try {
        await rename(await this.resolve(from), await this.resolve(to));
        return true;
      } catch (error) {
        if (isCode(error, 'ENOENT')) return false;
        throw error;
      }
    });
  }

  mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    return this.small(`lock ${path}`, () => this.lockDir(path, ownerName, ownerData));
  }

  replaceIfUnchanged(
    path: string,
    data: Buffer,
    guard: { expectedSha256: string | null; required: string[]; lock: LockClaim },
  ): Promise<ReplaceResult> {
    return this.small(`update ${path}`, async () => {
      const { lock } = guard;
      const taken = await this.lockDir(lock.path, lock.ownerName, lock.ownerData);
      if (!taken.created) return { outcome: 'locked', ownerData: taken.ownerData, ageMs: taken.ageMs };
      try {
        for (const required of guard.required) {
          if (!(await this.entry(await this.resolve(required)))?.isFile) return { outcome: 'missing', path: required };
        }
        const full = await this.resolve(path);
        const current = await this.readBounded(path, MANIFEST_MAX_BYTES);
        const currentSha256 = current === undefined ? null : sha256Of(current);
        if (currentSha256 !== guard.expectedSha256) return { outcome: 'changed' };
        await mkdir(dirname(full), { recursive: true });
        await writeFileAtomic(full, data);
        return { outcome: 'replaced' };
      } finally {
        const owner = await this.readBounded(`${lock.path}/${lock.ownerName}`, OWNER_MAX_BYTES).catch(() => undefined);
        if (owner?.equals(lock.ownerData)) await rm(await this.resolve(lock.path), { recursive: true, force: true });
      }
    });
  }

  /** mkdir is atomic: exactly one caller creates `path` and writes the owner file. */
  private async lockDir(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    const full = await this.resolve(path);
    await mkdir(dirname(full), { recursive: true });
    try {
      await mkdir(full);
    } catch (error) {
      if (!isCode(error, 'EEXIST')) throw error;
      const owner = await this.readBounded(`${path}/${ownerName}`, OWNER_MAX_BYTES).catch(() => undefined);
      const times = await Promise.all([lstat(full).catch(() => undefined), lstat(join(full, ownerName)).catch(() => undefined)]);
      const now = await this.nasNow();
      // Gone again in between: a holder just released it (age 0: try again soon).
      const seen = times.filter((s) => s !== undefined).map((s) => s.mtimeMs);
      const newest = seen.length > 0 ? Math.max(...seen) : now;
      return { created: false, ownerData: owner, ageMs: now - newest };
    }
    await writeFileAtomic(join(full, ownerName), ownerData);
    return { created: true };
  }

  async putLayer(localPath: string, hash: string, partPath: string, target: string, options: TransferOptions = {}): Promise<TransferResult> {
    const existing = await this.stat(target);
    if (existing && !existing.isFile) throw notRegularError(this.where, target);
    if (existing) return { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 };
    const final = await this.resolve(target);
    const part = await this.resolve(partPath);
    await this.small('prepare upload', async () => {
      await mkdir(dirname(part), { recursive: true });
      await mkdir(dirname(final), { recursive: true });
    });
    const size = (await stat(localPath)).size;
    const handle = await this.small(`open ${partPath}`, () => this.openInRoot(partPath, constants.O_RDWR | constants.O_CREAT, 0o600));
    let done = 0;
    try {
      const partSize = (await handle.stat()).size;
      let offset = partSize <= size ? partSize : 0;
      let digest = createHash('sha256');
      if (offset > 0) {
        // Resume only onto a prefix that is byte for byte the local one.
        await hashRange(createReadStream(localPath, { start: 0, end: offset - 1, highWaterMark: 2 ** 20 }), digest);
        const kept = createHash('sha256');
        await hashRange(createReadStream('', { fd: handle.fd, start: 0, end: offset - 1, highWaterMark: 2 ** 20, autoClose: false }), kept);
        if (kept.digest('hex') !== digest.copy().digest('hex')) {
          offset = 0;
          digest = createHash('sha256');
        }
      }
      await handle.truncate(offset);
      done = offset;
      options.onProgress?.(done, size);
      const out = createWriteStream('', { fd: handle.fd, start: offset, autoClose: false });
      const guard = stallGuard(this.options.stallTimeoutMs, (error) => out.destroy(error), () => ({ where: this.where, direction: 'push', hash, done, size }));
      const hashing = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          digest.update(chunk);
          guard.tick();
          done += chunk.length;
          options.onProgress?.(done, size);
          callback(null, chunk);
        },
      });
      try {
        await pipeline(createReadStream(localPath, { start: offset, highWaterMark: 2 ** 20 }), hashing, out);
        await handle.sync();
      } finally {
        guard.stop();
      }
      const actual = digest.digest('hex');
      if (actual !== hash) {
        await rm(part, { force: true });
        throw new IntegrityError(`local layer ${localPath} is damaged: its bytes hash to ${actual}`, {
          remedy: 'nothing was published; restore the disk from the NAS or another host',
        });
      }
      await handle.chmod(LAYER_MODE);
      await handle.close();
      await publishNoReplace(part, final);
      await fsyncDir(dirname(final));
      return { bytesMoved: size - offset, alreadyThere: false, resumedFrom: offset };
    } catch (error) {
      await handle.close().catch(() => undefined);
      if (!isCode(error, 'ENOSPC') && !isCode(error, 'EDQUOT')) throw error;
      await rm(part, { force: true });
      throw new NasFullError(`the NAS is full: ${this.where} took ${done} of ${size} bytes of layer ${hash}; nothing was published`, {
        remedy: 'free space on the NAS (kss gc removes what retention allows), then push again',
      });
    }
  }

  async getLayer(source: string, hash: string, size: number, localPart: string, options: TransferOptions = {}): Promise<TransferResult> {
    const handle = await this.small(`open ${source}`, () => this.openInRoot(source, constants.O_RDONLY)).catch((error: unknown) => {
      if (!isCode(error, 'ENOENT')) throw error;
      throw new IntegrityError(`layer ${hash} is missing on ${this.where} (${source})`, {
        remedy: 'the NAS lacks a layer its manifest names: check the NAS directory; the host that made it may still have it',
      });
    });
    try {
      const found = (await handle.stat()).size;
      if (found !== size) {
        throw new IntegrityError(`layer ${hash} on ${this.where} is ${found} bytes, but its manifest says ${size}; nothing was read`, {
          remedy: 'nothing local was changed; the copy on the NAS is damaged or was replaced: push it again from the host that made it',
        });
      }
      return await receiveFile({
        localPart,
        hash,
        size,
        what: `layer ${hash} from ${this.where}`,
        onProgress: options.onProgress,
        open: async (offset) => {
          // Never past the manifest's size, even if the file grows meanwhile.
          const stream = offset < size ? createReadStream('', { fd: handle.fd, start: offset, end: size - 1, highWaterMark: 2 ** 20, autoClose: false }) : Readable.from([]);
          let done = offset;
          const guard = stallGuard(this.options.stallTimeoutMs, (error) => stream.destroy(error), () => ({ where: this.where, direction: 'pull', hash, done, size }));
          stream.on('data', (chunk: Buffer) => {
            done += chunk.length;
            guard.tick();
          });
          const finished = new Promise<void>((resolve, reject) => {
            stream.on('end', resolve);
            stream.on('error', reject);
          }).finally(() => guard.stop());
          finished.catch(() => undefined);
          return { stream, finished, abort: () => stream.destroy() };
        },
      });
    } finally {
      await handle.close();
    }
  }

  async close(): Promise<void> {}

  /** The NAS's clock: the mtime of a file written now (a share's server sets it). */
  private async nasNow(): Promise<number> {
    const probe = await this.resolve(CLOCK_PROBE);
    await writeFile(probe, '', { flag: constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | NO_FOLLOW });
    return (await lstat(probe)).mtimeMs;
  }

  /** A small file's content, read through openInRoot and never past `maxBytes`; undefined when it does not exist. */
  private async readBounded(path: string, maxBytes: number): Promise<Buffer | undefined> {
    let handle: FileHandle;
    try {
      handle = await this.openInRoot(path, constants.O_RDONLY);
    } catch (error) {
      if (isCode(error, 'ENOENT')) return undefined;
      throw error;
    }
    try {
      if ((await handle.stat()).size > maxBytes) throw tooLargeError(this.where, path, maxBytes);
      const buffer = Buffer.alloc(maxBytes + 1);
      let length = 0;
      for (let read = -1; read !== 0 && length < buffer.length; length += read) {
        ({ bytesRead: read } = await handle.read(buffer, length, buffer.length - length, length));
      }
      if (length > maxBytes) throw tooLargeError(this.where, path, maxBytes);
      return buffer.subarray(0, length);
    } finally {
      await handle.close();
    }
  }

  /**
   * Opens a file on the share without following a symbolic link anywhere below the
   * root (resolve, then O_NOFOLLOW), and keeps it only if it is a regular file whose
   * real path lies inside the root: a directory swapped for a link between the check
   * and the open is caught here.
   */
  private async openInRoot(path: string, flags: number, mode?: number): Promise<FileHandle> {
    const full = await this.resolve(path);
    let handle: FileHandle;
    try {
      handle = await open(full, flags | NO_FOLLOW, mode);
    } catch (error) {
      if (isCode(error, 'ELOOP')) throw symlinkError(this.where, path);
      throw error;
    }
    try {
      if (!(await handle.stat()).isFile()) throw notRegularError(this.where, path);
      this.realRoot ??= realpath(this.options.root);
      const real = await readlink(`/proc/self/fd/${handle.fd}`);
      if (!real.startsWith(`${await this.realRoot}/`)) throw symlinkError(this.where, path);
      return handle;
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  private async entry(full: string): Promise<NasEntry | undefined> {
    try {
      const s = await lstat(full);
      return { name: full.slice(full.lastIndexOf('/') + 1), size: s.size, mtimeMs: s.mtimeMs, isDirectory: s.isDirectory(), isFile: s.isFile() };
    } catch (error) {
      if (isCode(error, 'ENOENT')) return undefined;
      throw error;
    }
  }

  /**
   * The local path of a NAS path, after checking that no existing component below the
   * root is a symbolic link (what a share's writer could plant to reach this host's files).
   */
  private async resolve(path: string): Promise<string> {
    const parts = path.split('/').filter((part) => part !== '' && part !== '.');
    if (path.startsWith('/') || parts.includes('..')) throw new Error(`internal: bad NAS path "${path}"`);
    let at = this.options.root;
    for (const part of parts) {
      at = join(at, part);
      const found = await lstat(at).catch((error: unknown) => {
        if (isCode(error, 'ENOENT') || isCode(error, 'ENOTDIR')) return undefined;
        throw error;
      });
      if (found === undefined) break;
      if (found.isSymbolicLink()) throw symlinkError(this.where, path);
    }
    return join(this.options.root, ...parts);
  }

  /** Runs a small operation under the deadline; a missing root means the share is not there. */
  private async small<T>(what: string, work: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new NasUnreachableError(`the NAS directory ${this.where} did not answer within ${this.options.opTimeoutMs / 1000} s (${what})`, {
              remedy: 'check that the share is mounted and its server is up',
            }),
          ),
        this.options.opTimeoutMs,
      );
    });
    try {
      const rootStat = await Promise.race([stat(this.options.root).catch(() => undefined), deadline]);
      if (!rootStat?.isDirectory()) {
        throw new NasUnreachableError(`the NAS directory ${this.where} does not exist`, {
          remedy: 'mount the share (or create the directory), or correct "nas" in the configuration',
        });
      }
      return await Promise.race([work(), deadline]);
    } finally {
      clearTimeout(timer);
    }
  }
}

function symlinkError(where: string, path: string): IntegrityError {
  return new IntegrityError(`${where}/${path} is or passes through a symbolic link; kvm-snapshot-sync follows none on a NAS share (one could point into this host's own files)`, {
    remedy: 'nothing was read or written there; remove the link from the share (kvm-snapshot-sync never makes one)',
  });
}

/** Feeds a stream's bytes into a hash. */
async function hashRange(stream: Readable, digest: Hash): Promise<void> {
  for await (const chunk of stream) digest.update(chunk as Buffer);
}

/** Publishes `part` as `final` unless a file is there already (same name, same bytes). */
async function publishNoReplace(part: string, final: string): Promise<void> {
  try {
    await link(part, final);
    await rm(part, { force: true });
  } catch (error) {
    if (isCode(error, 'EEXIST')) return void (await rm(part, { force: true }));
    // Shares without hard links (some SMB servers): check, then rename.
    if (!isCode(error, 'EPERM') && !isCode(error, 'ENOTSUP') && !isCode(error, 'EOPNOTSUPP')) throw error;
    if (await stat(final).catch(() => undefined)) return void (await rm(part, { force: true }));
    await rename(part, final);
  }
}

/** Calls `fail` when `tick` has not been called for `ms`; `report` says what was moving, and how far. */
function stallGuard(
  ms: number,
  fail: (error: Error) => void,
  report: () => Omit<StallReport, 'verdict' | 'stallMs'>,
): { tick(): void; stop(): void } {
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => fail(stallError({ ...report(), verdict: 'stalled', stallMs: ms })), ms);
  };
  arm();
  return { tick: arm, stop: () => clearTimeout(timer) };
}

function isCode(error: unknown, code: string): boolean {
  return (error as NodeJS.ErrnoException | undefined)?.code === code;
}
