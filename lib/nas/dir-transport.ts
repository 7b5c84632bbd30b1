// The NAS as a directory: a mounted share (NFS, SMB) or a local disk (see
// lib/nas/transport.ts for the contract).
//
// Bytes are hashed as they are read from the local layer, and the upload is flushed to
// the share before it is published; the share is trusted to store what it acknowledged
// (reading it back through a client cache would prove nothing). An interrupted upload
// resumes only after its kept prefix is read back and found equal to the local one.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, link, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { writeFileAtomic, fsyncDir } from '../durable-fs.js';
import { sha256Of } from '../hash.js';
import { IntegrityError, NasFullError, NasUnreachableError } from '../errors.js';
import { hashPrefix, receiveFile } from './receive-file.js';
import { stallError, type StallReport } from './stall.js';
import type { ExclusiveResult, LockClaim, NasEntry, NasTransport, ReplaceResult, TransferOptions, TransferResult } from './transport.js';

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

  readFile(path: string): Promise<Buffer | undefined> {
    return this.small(`read ${path}`, async () => {
      try {
        return await readFile(this.resolve(path));
      } catch (error) {
        if (isCode(error, 'ENOENT')) return undefined;
        throw error;
      }
    });
  }

  writeFileAtomic(path: string, data: Buffer): Promise<void> {
    return this.small(`write ${path}`, async () => {
      const full = this.resolve(path);
      await mkdir(dirname(full), { recursive: true });
      await writeFileAtomic(full, data);
    });
  }

  stat(path: string): Promise<NasEntry | undefined> {
    return this.small(`stat ${path}`, () => this.entry(this.resolve(path)));
  }

  list(dir: string): Promise<NasEntry[]> {
    return this.small(`list ${dir}`, async () => {
      const full = this.resolve(dir);
      const names = await readdir(full).catch((error: unknown) => {
        if (isCode(error, 'ENOENT')) return [] as string[];
        throw error;
      });
      const entries = await Promise.all(names.map((name) => this.entry(join(full, name))));
      return entries.filter((entry): entry is NasEntry => entry !== undefined);
    });
  }

  remove(path: string): Promise<void> {
    return this.small(`remove ${path}`, () => rm(this.resolve(path), { recursive: true, force: true }));
  }

  rename(from: string, to: string): Promise<boolean> {
    return this.small(`rename ${from}`, async () => {
      try {
        await rename(this.resolve(from), this.resolve(to));
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
          if (!(await this.entry(this.resolve(required)))) return { outcome: 'missing', path: required };
        }
        const full = this.resolve(path);
        const current = await readFile(full).catch((error: unknown) => {
          if (isCode(error, 'ENOENT')) return undefined;
          throw error;
        });
        const currentSha256 = current === undefined ? null : sha256Of(current);
        if (currentSha256 !== guard.expectedSha256) return { outcome: 'changed' };
        await mkdir(dirname(full), { recursive: true });
        await writeFileAtomic(full, data);
        return { outcome: 'replaced' };
      } finally {
        const owner = join(this.resolve(lock.path), lock.ownerName);
        if ((await readFile(owner).catch(() => undefined))?.equals(lock.ownerData)) await rm(this.resolve(lock.path), { recursive: true, force: true });
      }
    });
  }

  /** mkdir is atomic: exactly one caller creates `path` and writes the owner file. */
  private async lockDir(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    const full = this.resolve(path);
    await mkdir(dirname(full), { recursive: true });
    try {
      await mkdir(full);
    } catch (error) {
      if (!isCode(error, 'EEXIST')) throw error;
      const owner = await readFile(join(full, ownerName)).catch(() => undefined);
      const times = await Promise.all([stat(full).catch(() => undefined), stat(join(full, ownerName)).catch(() => undefined)]);
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
    const final = this.resolve(target);
    if (await this.stat(target)) return { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 };
    const part = this.resolve(partPath);
    await this.small('prepare upload', async () => {
      await mkdir(dirname(part), { recursive: true });
      await mkdir(dirname(final), { recursive: true });
    });
    const size = (await stat(localPath)).size;
    const partSize = (await stat(part).catch(() => undefined))?.size ?? 0;
    let offset = partSize <= size ? partSize : 0;
    let digest = createHash('sha256');
    if (offset > 0) {
      // Resume only onto a prefix that is byte for byte the local one.
      await hashPrefix(localPath, offset, digest);
      const kept = createHash('sha256');
      await hashPrefix(part, offset, kept);
      if (kept.digest('hex') !== digest.copy().digest('hex')) {
        offset = 0;
        digest = createHash('sha256');
      }
    }
    const handle = await open(part, offset > 0 ? 'r+' : 'w', 0o644);
    await handle.truncate(offset);
    await handle.close();

    let done = offset;
    options.onProgress?.(done, size);
    const out = createWriteStream(part, { flags: 'r+', start: offset, flush: true });
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
    } catch (error) {
      if (!isCode(error, 'ENOSPC') && !isCode(error, 'EDQUOT')) throw error;
      await rm(part, { force: true });
      throw new NasFullError(`the NAS is full: ${this.where} took ${done} of ${size} bytes of layer ${hash}; nothing was published`, {
        remedy: 'free space on the NAS (kss gc removes what retention allows), then push again',
      });
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
    await chmod(part, 0o444);
    await publishNoReplace(part, final);
    await fsyncDir(dirname(final));
    return { bytesMoved: size - offset, alreadyThere: false, resumedFrom: offset };
  }

  async getLayer(source: string, hash: string, localPart: string, options: TransferOptions = {}): Promise<TransferResult> {
    const entry = await this.stat(source);
    if (!entry) {
      throw new IntegrityError(`layer ${hash} is missing on ${this.where} (${source})`, {
        remedy: 'the NAS lacks a layer its manifest names: check the NAS directory; the host that made it may still have it',
      });
    }
    const full = this.resolve(source);
    return receiveFile({
      localPart,
      hash,
      size: entry.size,
      what: `layer ${hash} from ${this.where}`,
      onProgress: options.onProgress,
      open: async (offset) => {
        const stream = createReadStream(full, { start: offset, highWaterMark: 2 ** 20 });
        let done = offset;
        const guard = stallGuard(this.options.stallTimeoutMs, (error) => stream.destroy(error), () => ({ where: this.where, direction: 'pull', hash, done, size: entry.size }));
        stream.on('data', (chunk) => {
          done += chunk.length;
          guard.tick();
        });
        const finished = new Promise<void>((resolve, reject) => {
          stream.on('end', resolve);
          stream.on('error', reject);
          stream.on('close', () => guard.stop());
        });
        finished.catch(() => undefined);
        return { stream, finished, abort: () => stream.destroy() };
      },
    });
  }

  async close(): Promise<void> {}

  /** The NAS's clock: the mtime of a file written now (a share's server sets it). */
  private async nasNow(): Promise<number> {
    const probe = join(this.options.root, '.kss-clock');
    await writeFile(probe, '');
    return (await stat(probe)).mtimeMs;
  }

  private async entry(full: string): Promise<NasEntry | undefined> {
    try {
      const s = await stat(full);
      return { name: full.slice(full.lastIndexOf('/') + 1), size: s.size, mtimeMs: s.mtimeMs, isDirectory: s.isDirectory() };
    } catch (error) {
      if (isCode(error, 'ENOENT')) return undefined;
      throw error;
    }
  }

  private resolve(path: string): string {
    if (path.startsWith('/') || path.split('/').includes('..')) throw new Error(`internal: bad NAS path "${path}"`);
    return join(this.options.root, path);
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
