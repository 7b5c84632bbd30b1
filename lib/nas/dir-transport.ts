// The NAS as a directory: a mounted share (NFS, SMB) or a local disk (see
// lib/nas/transport.ts for the contract).
//
// Bytes are hashed as they are read from the local layer, and the upload is flushed to
// the share before it is published; the share is trusted to store what it acknowledged
// (reading it back through a client cache would prove nothing). An interrupted upload
// resumes only after its kept prefix is read back and found equal to the local one.
//
// A share is written by others too: every path is resolved inside the root by
// lib/nas/share-walk.ts (no symbolic link is followed, no directory swapped in between
// is used, only regular files are opened, a FIFO or device never is). Streams get
// descriptors of their own (opened through /proc/self/fd), so that a stream torn down
// in the middle never closes a descriptor something else still holds.
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { link, lstat, mkdir, open, readdir, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeFileAtomic, fsyncDir } from '../durable-fs.js';
import { sha256Of } from '../hash.js';
import { MANIFEST_MAX_BYTES } from './format.js';
import { IntegrityError, NasFullError, NasUnreachableError } from '../errors.js';
import { pacedStream } from './pace.js';
import { receiveFile } from './receive-file.js';
import { atPlace, openPlaceDirectory, openPlaceFile, placeOf, removeAt, type Place } from './share-walk.js';
import { stallError, type StallReport } from './stall.js';
import { notRegularError, OWNER_MAX_BYTES, tooLargeError, type ExclusiveResult, type LockClaim, type NasEntry, type NasTransport, type ReplaceResult, type TransferOptions, type TransferResult } from './transport.js';

/** Published layers and uploads: readable by their owner and group only (guest data). */
const LAYER_MODE = 0o440;

export interface DirTransportOptions {
  root: string;
  /** Deadline of every small operation: a hung mount must not hang the hook. */
  opTimeoutMs: number;
  /** A stream that moves no byte for this long fails. */
  stallTimeoutMs: number;
}

export class DirTransport implements NasTransport {
  readonly where: string;

  constructor(private readonly options: DirTransportOptions) {
    this.where = options.root;
  }

  readFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    return this.small(`read ${path}`, () => this.at(path, false, (place) => this.readBounded(place, maxBytes)));
  }

  writeFileAtomic(path: string, data: Buffer): Promise<void> {
    // A new file under a temporary name (O_EXCL), renamed over the name: nothing is written into an existing file.
    return this.small(`write ${path}`, async () => void (await this.at(path, true, (place) => writeFileAtomic(place.path, data, 0o600))));
  }

  stat(path: string): Promise<NasEntry | undefined> {
    return this.small(`stat ${path}`, () => this.at(path, false, (place) => entryOf(place.path, place.name)));
  }

  list(dir: string): Promise<NasEntry[]> {
    return this.small(`list ${dir}`, async () => {
      const entries = await this.at(dir, false, async (place) => {
        const held = await openPlaceDirectory(place, this.where);
        if (held === undefined) return [];
        try {
          const names = await readdir(`/proc/self/fd/${held.fd}`);
          const found = await Promise.all(names.map((name) => entryOf(`/proc/self/fd/${held.fd}/${name}`, name)));
          return found.filter((entry): entry is NasEntry => entry !== undefined);
        } finally {
          await held.close();
        }
      });
      return entries ?? [];
    });
  }

  remove(path: string): Promise<void> {
    return this.small(`remove ${path}`, async () => void (await this.at(path, false, (place) => removeAt(place, this.where))));
  }

  rename(from: string, to: string): Promise<boolean> {
    return this.small(`rename ${from}`, async () => {
      const done = await this.at(from, false, (source) =>
        this.at(to, true, async (target) => {
          try {
            await rename(source.path, target.path);
            return true;
          } catch (error) {
            if (isCode(error, 'ENOENT')) return false;
            throw error;
          }
        }),
      );
      return done ?? false;
    });
  }

  mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    return this.small(`lock ${path}`, () => this.lockDir(path, ownerName, ownerData));
  }

  replaceIfUnchanged(
    path: string,
    data: Buffer,
    guard: { expectedSha256: string | null; required: string[]; remove?: string[]; lock: LockClaim },
  ): Promise<ReplaceResult> {
    return this.small(`update ${path}`, async () => {
      const { lock } = guard;
      const taken = await this.lockDir(lock.path, lock.ownerName, lock.ownerData);
      if (!taken.created) return { outcome: 'locked', ownerData: taken.ownerData, ageMs: taken.ageMs };
      try {
        for (const required of guard.required) {
          if (!(await this.at(required, false, (place) => entryOf(place.path, place.name)))?.isFile) return { outcome: 'missing', path: required };
        }
        return await this.atMade(path, async (place): Promise<ReplaceResult> => {
          const current = await this.readBounded(place, MANIFEST_MAX_BYTES);
          const currentSha256 = current === undefined ? null : sha256Of(current);
          if (currentSha256 !== guard.expectedSha256) return { outcome: 'changed' };
          for (const gone of guard.remove ?? []) await this.at(gone, false, (file) => removeAt(file, this.where));
          await writeFileAtomic(place.path, data, 0o600);
          return { outcome: 'replaced' };
        });
      } finally {
        const owner = await this.at(`${lock.path}/${lock.ownerName}`, false, (place) => this.readBounded(place, OWNER_MAX_BYTES)).catch(() => undefined);
        if (owner?.equals(lock.ownerData)) await this.at(lock.path, false, (place) => removeAt(place, this.where));
      }
    });
  }

  /** mkdir is atomic: exactly one caller creates `path` and writes the owner file (through the new directory's own descriptor). */
  private async lockDir(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    return this.atMade(path, async (place) => {
      try {
        await mkdir(place.path);
      } catch (error) {
        if (!isCode(error, 'EEXIST')) throw error;
        const owner = await this.at(`${path}/${ownerName}`, false, (inside) => this.readBounded(inside, OWNER_MAX_BYTES)).catch(() => undefined);
        const times = await Promise.all([entryOf(place.path, place.name), this.at(`${path}/${ownerName}`, false, (inside) => entryOf(inside.path, ownerName)).catch(() => undefined)]);
        const now = await this.nasNow();
        // Gone again in between: a holder just released it (age 0: try again soon).
        const seen = times.filter((entry) => entry !== undefined).map((entry) => entry.mtimeMs);
        const newest = seen.length > 0 ? Math.max(...seen) : now;
        return { created: false, ownerData: owner, ageMs: now - newest };
      }
      const made = await openPlaceDirectory(place, this.where);
      if (made === undefined) throw new IntegrityError(`${this.where}/${path} vanished as it was made`, { remedy: 'try again; if it repeats, something else removes files on the NAS' });
      try {
        await writeFileAtomic(`/proc/self/fd/${made.fd}/${ownerName}`, ownerData, 0o600);
      } finally {
        await made.close();
      }
      return { created: true };
    });
  }

  async putLayer(localPath: string, hash: string, partPath: string, target: string, options: TransferOptions = {}): Promise<TransferResult> {
    const existing = await this.stat(target);
    if (existing && !existing.isFile) throw notRegularError(this.where, target);
    if (existing) return { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 };
    const size = (await stat(localPath)).size;
    const [part, final] = (await this.small('prepare upload', () => this.placesOf([partPath, target]), (late) => void closeAll(late))) as [Place, Place];
    const open = () => openPlaceFile(part, this.where, { write: true, create: true });
    // A read-only upload left behind (published nowhere) cannot be continued without root's rights on the share: start it anew.
    const opening = open().catch(async (error: unknown) => {
      if (!isCode(error, 'EACCES')) throw error;
      await unlinkIfThere(part.path);
      return open();
    });
    let handle: FileHandle;
    try {
      handle = await this.small(`open ${partPath}`, () => opening);
    } catch (error) {
      // The open may still be under way on a hung share: the places go once it is done, not under it.
      void opening
        .then((late) => late.close(), () => undefined)
        .finally(() => closeAll([part, final]))
        .catch(() => undefined);
      throw error;
    }
    try {
      let offset: number;
      try {
        offset = await this.upload(handle, localPath, hash, size, options);
      } catch (error) {
        if (!(error instanceof NasFullError) && !(error instanceof IntegrityError)) throw error; // kept: the next push resumes
        // Closed before it is removed: a share (NFS) keeps an open file's space until it is closed.
        await handle.close().catch(() => undefined);
        await unlinkIfThere(part.path);
        throw error;
      }
      await publishNoReplace(part.path, final.path);
      // Read-only only once published: an upload left writable can be resumed by a client without root's rights on the share.
      await handle.chmod(LAYER_MODE);
      await fsyncDir(final.dirPath);
      return { bytesMoved: size - offset, alreadyThere: false, resumedFrom: offset };
    } finally {
      try {
        await handle.close();
      } finally {
        await closeAll([part, final]);
      }
    }
  }

  /** The places of several NAS paths (directories made as needed); none is left open when one fails. */
  private async placesOf(paths: string[]): Promise<Place[]> {
    const opened = await Promise.allSettled(paths.map((path) => placeOf(this.options.root, this.where, path, true)));
    const places = opened.map((result) => (result.status === 'fulfilled' ? result.value : undefined));
    const failed = opened.find((result) => result.status === 'rejected');
    if (failed || places.includes(undefined)) {
      await closeAll(places);
      throw failed ? (failed as PromiseRejectedResult).reason : new IntegrityError(`a directory on ${this.where} vanished as it was made`, { remedy: 'try again; if it repeats, something else removes files on the NAS' });
    }
    return places as Place[];
  }

  /**
   * Writes the local layer into the open upload `handle`, continuing what it holds when
   * that is byte for byte the local file's start, and flushes it. Returns the offset it
   * continued from; a NasFullError or IntegrityError (not `hash`) means the upload is
   * to be discarded.
   */
  private async upload(handle: FileHandle, localPath: string, hash: string, size: number, options: TransferOptions): Promise<number> {
    const partSize = (await handle.stat()).size;
    let offset = partSize <= size ? partSize : 0;
    let digest = createHash('sha256');
    if (offset > 0) {
      await hashRange(createReadStream(localPath, { start: 0, end: offset - 1, highWaterMark: 2 ** 20 }), digest);
      const kept = createHash('sha256');
      await hashRange(createReadStream(ownFd(handle), { start: 0, end: offset - 1, highWaterMark: 2 ** 20 }), kept);
      if (kept.digest('hex') !== digest.copy().digest('hex')) {
        offset = 0;
        digest = createHash('sha256');
      }
    }
    await handle.truncate(offset);
    let done = offset;
    options.onProgress?.(done, size);
    const out = createWriteStream(ownFd(handle), { flags: 'r+', start: offset });
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
      const read = createReadStream(localPath, { start: offset, highWaterMark: 2 ** 20 });
      await (options.maxBytesPerSecond ? pipeline(read, pacedStream(options.maxBytesPerSecond), hashing, out) : pipeline(read, hashing, out));
      await handle.sync();
    } catch (error) {
      if (!isCode(error, 'ENOSPC') && !isCode(error, 'EDQUOT')) throw error;
      throw new NasFullError(`the NAS is full: ${this.where} took ${done} of ${size} bytes of layer ${hash}; nothing was published`, {
        remedy: 'free space on the NAS (kss gc removes what retention allows), then push again',
      });
    } finally {
      guard.stop();
    }
    const actual = digest.digest('hex');
    if (actual !== hash) {
      throw new IntegrityError(`local layer ${localPath} is damaged: its bytes hash to ${actual}`, {
        remedy: 'nothing was published; restore the disk from the NAS or another host',
      });
    }
    return offset;
  }

  async getLayer(source: string, hash: string, size: number, localPart: string, options: TransferOptions = {}): Promise<TransferResult> {
    const handle = await this.small(
      `open ${source}`,
      async () => (await this.at(source, false, (place) => openPlaceFile(place, this.where).catch(missingAsUndefined))) ?? undefined,
      (late) => void late?.close(),
    );
    if (handle === undefined) {
      throw new IntegrityError(`layer ${hash} is missing on ${this.where} (${source})`, {
        remedy: 'the NAS lacks a layer its manifest names: check the NAS directory; the host that made it may still have it',
      });
    }
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
          const stream = offset < size ? createReadStream(ownFd(handle), { start: offset, end: size - 1, highWaterMark: 2 ** 20 }) : Readable.from([]);
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

  /** Runs `work` on the place of a NAS path (lib/nas/share-walk.ts); undefined when a directory on the way is missing. */
  private at<T>(path: string, create: boolean, work: (place: Place) => Promise<T>): Promise<T | undefined> {
    return atPlace(this.options.root, this.where, path, create, work);
  }

  /** As `at`, making the directories on the way; one that vanishes as it is made is an error. */
  private async atMade<T>(path: string, work: (place: Place) => Promise<T>): Promise<T> {
    const [place] = (await this.placesOf([path])) as [Place];
    try {
      return await work(place);
    } finally {
      await place.close();
    }
  }

  /** The NAS's clock: the mtime of a new file of ours (a share's server sets it), removed again. */
  private async nasNow(): Promise<number> {
    const probe = `.kss-clock-${randomBytes(6).toString('hex')}`;
    return (await this.at(probe, false, async (place) => {
      const made = await open(place.path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
      try {
        return (await made.stat()).mtimeMs;
      } finally {
        await made.close();
        await unlink(place.path);
      }
    })) as number;
  }

  /** A small file's content, never read past `maxBytes`; undefined when it does not exist. */
  private async readBounded(place: Place, maxBytes: number): Promise<Buffer | undefined> {
    const handle = await openPlaceFile(place, this.where).catch(missingAsUndefined);
    if (handle === undefined) return undefined;
    try {
      if ((await handle.stat()).size > maxBytes) throw tooLargeError(this.where, place.nasPath, maxBytes);
      // Read to the end (it may have grown since fstat), but never past the limit.
      const chunks: Buffer[] = [];
      let length = 0;
      for (;;) {
        const chunk = Buffer.alloc(Math.min(2 ** 16, maxBytes + 1 - length));
        const { bytesRead } = await handle.read(chunk, 0, chunk.length, length);
        if (bytesRead === 0) break;
        chunks.push(chunk.subarray(0, bytesRead));
        length += bytesRead;
        if (length > maxBytes) throw tooLargeError(this.where, place.nasPath, maxBytes);
      }
      return Buffer.concat(chunks, length);
    } finally {
      await handle.close();
    }
  }

  /**
   * Runs a small operation under the deadline; a missing root means the share is not
   * there. `late` disposes of a result that arrives after the deadline.
   */
  private async small<T>(what: string, work: () => Promise<T>, late?: (result: T) => void): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    let expired = false;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        expired = true;
        reject(
          new NasUnreachableError(`the NAS directory ${this.where} did not answer within ${this.options.opTimeoutMs / 1000} s (${what})`, {
            remedy: 'check that the share is mounted and its server is up',
          }),
        );
      }, this.options.opTimeoutMs);
    });
    try {
      const rootStat = await Promise.race([stat(this.options.root).catch(() => undefined), deadline]);
      if (!rootStat?.isDirectory()) {
        throw new NasUnreachableError(`the NAS directory ${this.where} does not exist`, {
          remedy: 'mount the share (or create the directory), or correct "nas" in the configuration',
        });
      }
      const running = work();
      if (late) void running.then((result) => expired && late(result), () => undefined);
      return await Promise.race([running, deadline]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** A descriptor of its own on an open file (the same file, through /proc): a stream closes it, never the FileHandle's. */
function ownFd(handle: FileHandle): string {
  return `/proc/self/fd/${handle.fd}`;
}

/** The entry at a path (lstat: a link is reported as what it is), or undefined. */
async function entryOf(path: string, name: string): Promise<NasEntry | undefined> {
  try {
    const s = await lstat(path);
    return { name, size: s.size, mtimeMs: s.mtimeMs, isDirectory: s.isDirectory(), isFile: s.isFile() };
  } catch (error) {
    if (isCode(error, 'ENOENT')) return undefined;
    throw error;
  }
}

function missingAsUndefined(error: unknown): undefined {
  if (isCode(error, 'ENOENT')) return undefined;
  throw error;
}

/** Feeds a stream's bytes into a hash. */
async function hashRange(stream: Readable, digest: Hash): Promise<void> {
  for await (const chunk of stream) digest.update(chunk as Buffer);
}

/** Publishes `part` as `final` unless a file is there already (same name, same bytes); both are names in held directories. */
async function publishNoReplace(part: string, final: string): Promise<void> {
  try {
    await link(part, final);
    await unlinkIfThere(part);
  } catch (error) {
    if (isCode(error, 'EEXIST')) return unlinkIfThere(part);
    // Shares without hard links (some SMB servers): check, then rename.
    if (!isCode(error, 'EPERM') && !isCode(error, 'ENOTSUP') && !isCode(error, 'EOPNOTSUPP')) throw error;
    if (await lstat(final).catch(() => undefined)) return unlinkIfThere(part);
    await rename(part, final);
  }
}

async function unlinkIfThere(path: string): Promise<void> {
  await unlink(path).catch((error: unknown) => {
    if (!isCode(error, 'ENOENT')) throw error;
  });
}

/** Closes the places that were opened, whether or not all were. */
async function closeAll(places: Array<Place | undefined>): Promise<void> {
  await Promise.all(places.map((place) => place?.close()));
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
