// The NAS over SSH, with the system's OpenSSH client (see lib/nas/transport.ts for the
// contract). Each operation is one ssh invocation running one script from
// lib/nas/remote-scripts.ts, all over one shared connection until close(); layer
// data streams through zstd where both ends have it, and is hashed on the NAS as it is
// written (no second read of a large file).
//
// Deadlines: a small operation is stopped after opTimeoutMs, a layer stream once it
// moves no byte for stallTimeoutMs (lib/nas/stall.ts); either way its NAS side is ended
// too (ssh-command.ts remoteCommand, buildRemoteKillCommand). Keep-alives alone would
// only notice a dead link, not a NAS whose commands hang while its sshd still answers.
import { randomBytes } from 'node:crypto';
import { closeSync, createReadStream, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync } from 'node:fs';
import { open, rm, stat as localStat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { IntegrityError, NasFullError, NasUnreachableError, ToolError } from '../errors.js';
import { bytesReadBy, runCommand, stageError, startPipeline, stdinOffsetOf, type Command, type Pipeline, type PipelineOptions, type StageResult } from '../runner.js';
import { shellQuote } from '../shell-quote.js';
import { pacedStream } from './pace.js';
import * as scripts from './remote-scripts.js';
import { SftpOps } from './sftp-ops.js';
import { FSYNC, POSIX_RENAME, SftpSession, SftpStatusError } from './sftp-session.js';
import { buildRemoteKillCommand, buildSftpCommand, buildSshCommand, buildSshExitCommand, classifySshFailure, remoteNote, sftpRefused, sshFailureCause, type SshMultiplex, type SshTarget } from './ssh-command.js';
import { busyLimitMs, stallError, streamVerdict, type StreamVerdict } from './stall.js';
import { tooLargeError, type ExclusiveResult, type LockBusy, type LockClaim, type NasEntry, type NasTransport, type ReplaceResult, type TransferOptions, type TransferResult } from './transport.js';

export interface SshTransportOptions {
  target: SshTarget;
  /** The NAS directory, absolute, on the NAS host. */
  root: string;
  /** Deadline of every small operation. */
  opTimeoutMs: number;
  /** A layer stream that moves no byte for this long is stopped, here and on the NAS. */
  stallTimeoutMs: number;
  /** Compress layer streams with zstd when both ends have it. */
  compress: boolean;
  /** false: the small operations run as scripts even where the NAS serves SFTP (default true: sftp-ops.ts). */
  sftp?: boolean;
}

/** How long an idle shared connection stays open when its transport was not closed. */
const CONTROL_PERSIST_SEC = 10;

/**
 * A small script's own wall clock on the NAS runs this much longer than our deadline
 * (ours fires first and says so); it ends the script even when this side is gone.
 * Streams get none: how long one may take depends on its size and the link.
 */
const NAS_SIDE_GRACE_SEC = 5;

/** Deadline of ending a NAS-side process group after a stall or a timeout. */
const NAS_KILL_DEADLINE_MS = 5000;

/** How often a stream's progress and stall deadline are looked at. */
const WATCH_INTERVAL_MS = 500;

/** The most a small command may print: a listing of a year's layers is well under it. */
const SMALL_OUTPUT_MAX_BYTES = 16 * 2 ** 20;

/** What the NAS side of one ssh command told on its stderr (ssh-command.ts remoteNote). */
class NasSide {
  pgid: number | undefined;
  /** When it last said it was busy without reading or writing the stream (0: never). */
  aliveAt = 0;

  /** For PipelineOptions.onStderrLine: reads our notes, and leaves them out of error texts. */
  listen(sshStage: number): (stage: number, line: string) => boolean {
    return (stage, line) => {
      const note = stage === sshStage ? remoteNote(line) : undefined;
      if (note === undefined) return false;
      if ('pgid' in note) this.pgid = note.pgid;
      else this.aliveAt = Date.now();
      return true;
    };
  }
}

/** A download's script found no zstd on the NAS to compress with: it is asked again for the plain bytes. */
const NO_NAS_ZSTD = new Error('the NAS has no zstd');

/** The SFTP session of a transport's small operations, and the ssh that carries it. */
interface SftpChannel {
  session: SftpSession;
  ops: SftpOps;
  pipe: Pipeline;
  /** How that ssh ended, once it has... */
  ended: Promise<StageResult>;
  /** ...and whether it has. */
  closed: boolean;
  /** Where ssh's log stood when it began. */
  logMark: number;
}

/** A layer stream for the stall watch: which way, which layer, and how far it got. */
interface StreamJob {
  direction: 'push' | 'pull';
  hash: string;
  size: number;
  offset: number;
  /** The ssh process's place in the pipeline. */
  sshStage: number;
  /** Bytes of the layer done so far (read here for a push, written here for a pull), if known now. */
  done(pids: Array<number | undefined>): number | undefined;
  /** Writes the first process's stdin (a capped push), when the pipeline is started with input 'pipe'. */
  feed?: (stdin: Writable) => Promise<void>;
}

export class SshTransport implements NasTransport {
  readonly where: string;
  private localZstd: Promise<boolean> | undefined;
  /** Whether the NAS has zstd: what its scripts last said; assumed until one says (a script refuses a stream it cannot read). */
  private nasZstd = true;
  private hasher: Promise<Command> | undefined;
  /** The shared connection's socket lives in a private directory made on first use. */
  private multiplex: SshMultiplex | undefined;
  /** Operations under way: close() stops them. */
  private readonly running = new Set<Pipeline>();
  /** The small operations' SFTP session, opened on first use; undefined: the NAS serves no SFTP, scripts do them. */
  private sftp: Promise<SftpChannel | undefined> | undefined;

  constructor(private readonly options: SshTransportOptions) {
    const { user, host, port } = options.target;
    this.where = `ssh ${user === undefined ? '' : `${user}@`}${host}:${port} ${options.root}`;
  }

  async readFile(path: string, maxBytes: number): Promise<Buffer | undefined> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.readFile(path, maxBytes));
    const result = await this.run(scripts.readFileScript(this.options.root, path, maxBytes), { maxOutput: maxBytes + 1 });
    if (result.exitCode === scripts.MISSING) return undefined;
    if (result.stdoutBuffer.length > maxBytes) throw tooLargeError(this.where, path, maxBytes);
    return result.stdoutBuffer;
  }

  async writeFileAtomic(path: string, data: Buffer): Promise<void> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.writeFileAtomic(path, data));
    const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    await this.run(scripts.writeFileScript(this.options.root, path, temp), { input: data });
  }

  async stat(path: string): Promise<NasEntry | undefined> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.stat(path));
    const result = await this.run(scripts.statScript(this.options.root, path));
    return result.exitCode === scripts.MISSING ? undefined : parseEntries(result.stdout)[0];
  }

  async list(dir: string): Promise<NasEntry[]> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.list(dir));
    return parseEntries((await this.run(scripts.listScript(this.options.root, dir))).stdout);
  }

  async remove(path: string): Promise<void> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.remove(path));
    await this.run(scripts.removeScript(this.options.root, path));
  }

  async rename(from: string, to: string): Promise<boolean> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.rename(from, to));
    return (await this.run(scripts.renameScript(this.options.root, from, to))).exitCode !== scripts.MISSING;
  }

  async mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.mkdirExclusive(path, ownerName, ownerData));
    const result = await this.run(scripts.mkdirExclusiveScript(this.options.root, path, ownerName), { input: ownerData });
    if (result.stdout.startsWith('created')) return { created: true };
    return { created: false, ...this.parseBusy('mkdirExclusive', result.stdoutBuffer) };
  }

  async replaceIfUnchanged(
    path: string,
    data: Buffer,
    guard: { expectedSha256: string | null; required: string[]; remove?: string[]; lock: LockClaim },
  ): Promise<ReplaceResult> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.replaceIfUnchanged(path, data, guard));
    const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    const { lock } = guard;
    const script = scripts.replaceIfUnchangedScript(this.options.root, path, temp, {
      expectedSha256: guard.expectedSha256,
      required: guard.required,
      remove: guard.remove,
      lockPath: lock.path,
      ownerName: lock.ownerName,
      ownerData: lock.ownerData.toString('utf8'),
    });
    const result = await this.run(script, { input: data });
    const reply = result.stdout;
    if (reply === 'replaced\n') return { outcome: 'replaced' };
    if (reply === 'changed\n') return { outcome: 'changed' };
    if (reply.startsWith('missing ')) return { outcome: 'missing', path: reply.slice(8).replace(/\n$/u, '') };
    return { outcome: 'locked', ...this.parseBusy('replaceIfUnchanged', result.stdoutBuffer) };
  }

  /** Reads "exists AGE_SECONDS\n<owner file>" (remote-scripts.ts takeLockLines). */
  private parseBusy(step: string, reply: Buffer): LockBusy {
    const text = reply.toString('utf8');
    const match = /^exists (-?\d+)\n/u.exec(text);
    if (!match) throw this.protocolError(step, text);
    const owner = reply.subarray(Buffer.byteLength(match[0]));
    return { ownerData: owner.length > 0 ? owner : undefined, ageMs: Number(match[1]) * 1000 };
  }

  async putLayer(localPath: string, hash: string, partPath: string, target: string, options: TransferOptions = {}): Promise<TransferResult> {
    const size = (await localStat(localPath)).size;
    const prepared = await this.prepareUpload(partPath, target);
    if (prepared === 'published') return { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 };
    const { partSize, claim } = prepared;
    const offset = claim !== undefined && partSize <= size ? partSize : 0;

    const job = { hash, partPrefix: partPath, target, size, compressed: await this.compressing() };
    let first = await this.sendLayer(localPath, { ...job, claim, offset }, options);
    if (first.outcome === 'no zstd') {
      this.nasZstd = false;
      first = await this.sendLayer(localPath, { ...job, compressed: false, claim, offset }, options);
    }
    if (first.outcome === 'published') return first.result;
    if (first.outcome === 'mismatch' && offset > 0) {
      // The kept prefix may have been the bad part: start over once.
      const again = await this.sendLayer(localPath, { ...job, claim: undefined, offset: 0 }, options);
      if (again.outcome === 'published') return again.result;
    }
    throw new IntegrityError(`the upload of layer ${hash} to ${this.where} did not verify (${first.detail})`, {
      remedy: `check the local layer with \`kss check\`; ${localPath} may be damaged`,
    });
  }

  /** Where an upload stands: published already, or the partial upload to continue (over SFTP where the NAS serves it). */
  private async prepareUpload(partPath: string, target: string): Promise<'published' | { partSize: number; claim: string | undefined }> {
    const sftp = await this.sftpChannel();
    if (sftp) return this.overSftp(sftp, (ops) => ops.prepareUpload(partPath, target));
    const prepared = (await this.run(scripts.prepareUploadScript(this.options.root, partPath, target))).stdout.trim();
    if (prepared === 'published') return 'published';
    const match = /^part (\d+) (.+) zstd=([01])$/u.exec(prepared);
    if (!match) throw this.protocolError('prepare upload', prepared);
    this.nasZstd = match[3] === '1';
    return { partSize: Number(match[1]), claim: match[2] === '-' ? undefined : (match[2] as string) };
  }

  /** Whether a layer stream is compressed: both ends have zstd (the NAS's is assumed until a script of it says it has none). */
  private async compressing(): Promise<boolean> {
    return this.options.compress && this.nasZstd && (await this.hasLocalZstd());
  }

  /**
   * One upload attempt. The layer file is read by the first process itself (zstd, or
   * ssh when not compressing; `tail` from the offset when resuming): on this 2-core
   * machine a copy through Node cost ~8 % of the throughput. Progress is the bytes
   * that process has read, from the kernel.
   */
  private async sendLayer(
    localPath: string,
    job: { hash: string; partPrefix: string; claim: string | undefined; target: string; size: number; offset: number; compressed: boolean },
    options: TransferOptions,
  ): Promise<{ outcome: 'published' | 'mismatch' | 'no zstd'; result: TransferResult; detail: string }> {
    const token = randomBytes(6).toString('hex');
    const ssh = this.ssh(scripts.receiveUploadScript(this.options.root, { ...job, token }), 0);
    // Capped (options.maxBytesPerSecond): Node reads the layer and feeds the first process at the cap.
    const cap = options.maxBytesPerSecond;
    const stages: Command[] = [
      ...(job.offset > 0 && !cap ? [{ file: 'tail', args: ['-c', `+${job.offset + 1}`, '--', localPath] }] : []),
      ...(job.compressed ? [{ file: 'zstd', args: ['-1', '-T0', '-cq'] }] : []),
      ssh,
    ];
    let fed = 0;
    const feed = (stdin: Writable) => {
      const counted = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          fed += chunk.length;
          callback(null, chunk);
        },
      });
      return pipeline(createReadStream(localPath, { start: job.offset, highWaterMark: 2 ** 20 }), pacedStream(cap as number), counted, stdin);
    };
    const logMark = this.logMark();
    const input = cap ? 'pipe' : job.offset > 0 ? 'ignore' : { file: localPath };
    const results = await this.stream(stages, { input, output: 'capture' }, options, {
      direction: 'push',
      hash: job.hash,
      size: job.size,
      offset: job.offset,
      sshStage: stages.length - 1,
      ...(cap ? { feed } : {}),
      // tail reads the file itself; otherwise it is the first process's stdin, read by
      // zstd or by the ssh master the descriptor was passed to. Once that process has
      // ended, it has read everything (had it failed, the pipeline would fail).
      done: (pids) => {
        if (cap) return job.offset + fed;
        const read = job.offset > 0 ? bytesReadBy(pids[0]) : stdinOffsetOf(pids[0]);
        return read === undefined ? job.size : job.offset + read;
      },
    });
    const sshResult = results[results.length - 1] as StageResult;
    this.throwIfSshFailed(sshResult, logMark);
    const result: TransferResult = { bytesMoved: job.size - job.offset, alreadyThere: false, resumedFrom: job.offset };
    // It read nothing: the zstd sending to it broke its pipe, which tells nothing.
    if (sshResult.exitCode === 0 && sshResult.stdout.trim() === scripts.NO_ZSTD_REPLY) return { outcome: 'no zstd', result, detail: 'the NAS has no zstd' };
    // The receiving end's failure is the cause; the senders' broken pipes only follow from it.
    for (const stage of [...results].reverse()) if (stage.exitCode !== 0) throw stageError(stage, this.where);

    const reply = sshResult.stdout.trim();
    if (reply === 'published') {
      options.onProgress?.(job.size, job.size);
      return { outcome: 'published', result, detail: reply };
    }
    if (reply.startsWith('mismatch')) return { outcome: 'mismatch', result, detail: reply };
    if (reply.startsWith('short')) {
      const stored = reply.slice(6);
      if (/No space left on device|Disk quota exceeded/iu.test(sshResult.stderrTail)) {
        await this.run(scripts.removePartsScript(this.options.root, job.partPrefix));
        throw new NasFullError(`the NAS is full: ${this.where} took ${stored} of ${job.size} bytes of layer ${job.hash}; nothing was published`, {
          remedy: 'free space on the NAS (kss gc removes what retention allows), then push again',
        });
      }
      throw new ToolError(`the NAS stored only ${stored} of ${job.size} bytes of layer ${job.hash}`, 'ssh', 0, sshResult.stderrTail, {
        remedy: 'push again (it resumes)',
      });
    }
    throw this.protocolError('upload', reply);
  }

  /**
   * Downloads through `ssh | zstd -d | head -c SIZE | tee -a PART | openssl dgst`: the
   * bytes never pass through Node, are hashed as they are written, and never exceed the
   * size the manifest names (head cuts a stream that decompresses to more: no zstd bomb
   * fills the disk before the hash fails). A resumed download is hashed whole afterwards
   * (a local re-read, only then); if it does not verify, the kept prefix may be what is
   * wrong, so it starts over once from nothing.
   */
  async getLayer(source: string, hash: string, size: number, localPart: string, options: TransferOptions = {}): Promise<TransferResult> {
    const found = await this.sizeOnNas(source);
    if (found === undefined) {
      throw new IntegrityError(`layer ${hash} is missing on ${this.where} (${source})`, {
        remedy: 'the NAS lacks a layer its manifest names: check the NAS directory; the host that made it may still have it',
      });
    }
    if (found !== size) {
      throw new IntegrityError(`layer ${hash} on ${this.where} is ${found} bytes, but its manifest says ${size}; nothing was read`, {
        remedy: 'nothing local was changed; the copy on the NAS is damaged or was replaced: push it again from the host that made it',
      });
    }
    let compressed = await this.compressing();
    const kept = (await localStat(localPart).catch(() => undefined))?.size ?? 0;
    const offset = kept <= size ? kept : 0;
    const receive = async (from: number) => {
      try {
        return await this.receiveLayer(source, hash, localPart, { size, offset: from, compressed }, options);
      } catch (error) {
        if (error !== NO_NAS_ZSTD) throw error;
        this.nasZstd = false;
        compressed = false;
        return this.receiveLayer(source, hash, localPart, { size, offset: from, compressed }, options);
      }
    };
    try {
      return await receive(offset);
    } catch (error) {
      if (!(error instanceof IntegrityError) || offset === 0) throw error;
      return receive(0);
    }
  }

  /** The size of a regular file on the NAS, or undefined when there is none (over SFTP where the NAS serves it). */
  private async sizeOnNas(source: string): Promise<number | undefined> {
    const sftp = await this.sftpChannel();
    if (sftp) {
      const entry = await this.overSftp(sftp, (ops) => ops.stat(source));
      return entry?.isFile ? entry.size : undefined;
    }
    const prepared = await this.run(scripts.prepareDownloadScript(this.options.root, source));
    if (prepared.exitCode === scripts.MISSING) return undefined;
    const match = /^size (\d+) zstd=([01])$/u.exec(prepared.stdout.trim());
    if (!match) throw this.protocolError('prepare download', prepared.stdout);
    this.nasZstd = match[2] === '1';
    return Number(match[1]);
  }

  private async receiveLayer(
    source: string,
    hash: string,
    localPart: string,
    job: { size: number; offset: number; compressed: boolean },
    options: TransferOptions,
  ): Promise<TransferResult> {
    const handle = await open(localPart, job.offset > 0 ? 'r+' : 'w', 0o600);
    await handle.truncate(job.offset);
    await handle.close();
    const hasher = await this.localHasher();
    const upstream: Command[] = [
      this.ssh(scripts.sendDownloadScript(this.options.root, source, job.offset, job.compressed), 0),
      ...(job.compressed ? [{ file: 'zstd', args: ['-dcq'] }] : []),
    ];
    const stages: Command[] = [
      ...upstream,
      { file: 'head', args: ['-c', String(job.size - job.offset)] },
      { file: 'tee', args: ['-a', '--', localPart] },
      ...(job.offset === 0 ? [hasher] : []),
    ];
    const logMark = this.logMark();
    const results = await this.stream(stages, { input: 'ignore', output: job.offset === 0 ? 'capture' : 'ignore' }, options, {
      direction: 'pull',
      hash,
      size: job.size,
      offset: job.offset,
      sshStage: 0,
      done: () => {
        try {
          return statSync(localPart).size;
        } catch {
          return undefined;
        }
      },
    });
    const got = (await localStat(localPart)).size;
    if (job.compressed && got === job.offset && results[0]?.exitCode === scripts.NO_ZSTD) throw NO_NAS_ZSTD;
    // With every byte here, what fed head does not matter (it is cut off when it sends more): the hash decides.
    const complete = got === job.size;
    if (!complete) this.throwIfSshFailed(results[0] as StageResult, logMark);
    for (const [index, stage] of results.entries()) {
      if (stage.exitCode !== 0 && !(complete && index < upstream.length)) throw stageError(stage, this.where);
    }

    const synced = await open(localPart, 'r');
    await synced.sync();
    await synced.close();
    const actual = job.offset === 0 ? (results.at(-1) as StageResult).stdout : (await runCommand({ ...hasher, args: [...hasher.args, localPart] })).stdout;
    const sum = actual.trim().split(/\s/u)[0];
    if (!complete || sum !== hash) {
      await rm(localPart, { force: true });
      throw new IntegrityError(`layer ${hash} from ${this.where} is corrupt: ${got} bytes hashing to ${sum}, expected ${job.size} bytes`, {
        remedy: 'nothing local was changed; if this repeats, the copy on the NAS is damaged',
      });
    }
    options.onProgress?.(job.size, job.size);
    return { bytesMoved: job.size - job.offset, alreadyThere: false, resumedFrom: job.offset };
  }

  /** openssl's SHA-256 (several times faster than sha256sum where SHA-NI exists), else sha256sum. */
  private localHasher(): Promise<Command> {
    this.hasher ??= runCommand({ file: 'openssl', args: ['version'] }).then(
      () => ({ file: 'openssl', args: ['dgst', '-sha256', '-r'] }),
      () => ({ file: 'sha256sum', args: [] }),
    );
    return this.hasher;
  }

  /**
   * Runs a layer stream's pipeline, telling its progress, and stops it (and its NAS
   * side) when nothing moved for the stall deadline, or when the NAS has said it was
   * busy for longer than a healthy disk would need for the layer (stall.ts).
   */
  private async stream(stages: Command[], pipeOptions: PipelineOptions, options: TransferOptions, job: StreamJob): Promise<StageResult[]> {
    const nas = new NasSide();
    const pipe = this.start(stages, { ...pipeOptions, onStderrLine: nas.listen(job.sshStage) });
    // A feed that fails here (a local read error) ends the stream short, which the NAS refuses; its cause is told after.
    const feeding = job.feed?.(pipe.stdin as Writable).then(
      () => undefined,
      (error: NodeJS.ErrnoException) => (error.code === 'EPIPE' || error.code === 'ERR_STREAM_PREMATURE_CLOSE' ? undefined : error),
    );
    const limits = { stallMs: this.options.stallTimeoutMs, busyMaxMs: busyLimitMs(this.options.stallTimeoutMs, job.size) };
    const seen = { done: job.offset, movedAt: Date.now() };
    let watch: NodeJS.Timeout | undefined;
    const stopped = new Promise<Exclude<StreamVerdict, 'moving'>>((resolve) => {
      watch = setInterval(() => {
        const done = job.done(pipe.pids);
        if (done !== undefined && done > seen.done) {
          seen.done = done;
          seen.movedAt = Date.now();
          options.onProgress?.(Math.min(done, job.size), job.size);
        }
        const verdict = streamVerdict(Date.now(), { movedAt: seen.movedAt, aliveAt: nas.aliveAt }, limits);
        if (verdict !== 'moving') resolve(verdict);
      }, WATCH_INTERVAL_MS);
    });
    options.onProgress?.(job.offset, job.size);
    const results = await Promise.race([pipe.done, stopped]).finally(() => clearInterval(watch));
    if (typeof results !== 'string') {
      const feedError = await feeding;
      if (feedError) throw feedError;
      return results;
    }
    await this.stopBothEnds(pipe, nas);
    throw stallError({ where: this.where, direction: job.direction, hash: job.hash, verdict: results, stallMs: limits.stallMs, busyMaxMs: limits.busyMaxMs, done: Math.min(seen.done, job.size), size: job.size });
  }

  /**
   * Kills a pipeline here and its NAS side's process group there, best effort and
   * within its own deadline. It does not wait for the pipeline to end: the shared
   * connection's master holds the stdio of every ssh over it until the NAS side is gone
   * (close() ends the master, if that did not work).
   */
  private async stopBothEnds(pipe: Pipeline, nas: NasSide): Promise<void> {
    pipe.kill();
    if (nas.pgid === undefined) return; // it never said: nothing to name (a small script's own wall clock ends it)
    const kill = this.start([buildRemoteKillCommand(this.options.target, nas.pgid)], { input: 'ignore', output: 'ignore' });
    const timer = setTimeout(() => kill.kill(), NAS_KILL_DEADLINE_MS);
    await kill.done.finally(() => clearTimeout(timer));
  }

  /**
   * For kss doctor: runs a script on the NAS (as every layer transfer does: its login
   * shell, coreutils `timeout`), and tells whether the small operations go over SFTP.
   */
  async probe(): Promise<{ sftp: boolean }> {
    await this.run(scripts.statScript(this.options.root, '.'));
    return { sftp: (await this.sftpChannel()) !== undefined };
  }

  /**
   * The SFTP session of the small operations, over the shared connection: opened once
   * and kept until close() or until it breaks (the next operation opens a new one).
   * undefined when the NAS serves no SFTP, or not OpenSSH's posix-rename and fsync.
   */
  private async sftpChannel(): Promise<SftpChannel | undefined> {
    if (this.options.sftp === false) return undefined;
    const opening = this.sftp;
    if (opening !== undefined) {
      const current = await opening;
      // One whose ssh ended meanwhile (a dropped link) is opened anew; a NAS without SFTP stays without.
      if (current === undefined || !current.closed) return current;
      if (this.sftp !== opening) return this.sftpChannel(); // another caller reopened it already
    }
    const opened = this.openSftp().catch((error: unknown) => {
      if (this.sftp === opened) this.sftp = undefined;
      throw error;
    });
    this.sftp = opened;
    return opened;
  }

  private async openSftp(): Promise<SftpChannel | undefined> {
    const logMark = this.logMark();
    const pipe = this.start([buildSftpCommand(this.options.target, this.sharing())], { input: 'pipe', output: 'pipe' });
    pipe.stdin?.on('error', () => undefined);
    const ended = pipe.done.then(([result]) => result as StageResult);
    // A session that could not begin: how ssh ended tells why.
    const started = SftpSession.start(pipe.stdin as Writable, pipe.stdout as Readable).catch(() => ended);
    const outcome = await this.withinDeadline(started, () => pipe.kill());
    if (!(outcome instanceof SftpSession)) {
      if (sftpRefused(outcome.exitCode, `${outcome.stderrTail}\n${this.loggedSince(logMark)}`)) return undefined;
      this.throwIfSshFailed(outcome, logMark);
      return undefined; // a server that ended at once: the scripts work without it
    }
    const channel: SftpChannel = { session: outcome, ops: new SftpOps(outcome, this.options.root, this.where), pipe, ended, closed: false, logMark };
    void ended.then(() => {
      channel.closed = true;
      outcome.fail(new Error('SFTP: the ssh session ended'));
    });
    if (!outcome.extensions.has(POSIX_RENAME) || !outcome.extensions.has(FSYNC)) {
      pipe.kill();
      return undefined;
    }
    // Not there over SFTP: missing, or the SFTP view is another tree (a ChrootDirectory); the scripts tell which.
    if (!(await this.overSftp(channel, (ops) => ops.stat('.')))?.isDirectory) {
      pipe.kill();
      return undefined;
    }
    return channel;
  }

  /** One small operation over SFTP, within the deadline of small operations; a session that broke is told as ssh tells it. */
  private async overSftp<T>(channel: SftpChannel, work: (ops: SftpOps) => Promise<T>): Promise<T> {
    const drop = () => {
      channel.pipe.kill();
      if (this.sftp !== undefined) void this.sftp.then((current) => current === channel && (this.sftp = undefined), () => undefined);
    };
    try {
      return await this.withinDeadline(work(channel.ops), drop);
    } catch (error) {
      if (error instanceof IntegrityError || error instanceof NasUnreachableError) throw error;
      if (error instanceof SftpStatusError) throw new Error(`${error.message} (${this.where})`, { cause: error });
      drop(); // the session broke: what ssh says is the cause
      const result = await this.withinDeadline(channel.ended, () => undefined).catch(() => undefined);
      if (result) this.throwIfSshFailed(result, channel.logMark);
      throw error;
    }
  }

  /** `work`, or a NasUnreachableError after the deadline of small operations (`stop` ends what it waits for). */
  private async withinDeadline<T>(work: Promise<T>, stop: () => void): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        stop();
        reject(
          new NasUnreachableError(`the NAS did not answer within ${this.options.opTimeoutMs / 1000} s (${this.where}); the command was stopped`, {
            remedy: 'check the network and the NAS (kss doctor)',
          }),
        );
      }, this.options.opTimeoutMs);
    });
    work.catch(() => undefined); // it may fail after the deadline: nobody waits for it then
    return Promise.race([work, late]).finally(() => clearTimeout(timer));
  }

  /** Stops what is under way and closes the shared connection (the next operation opens a new one). */
  async close(): Promise<void> {
    this.sftp = undefined;
    for (const pipe of this.running) pipe.kill();
    const multiplex = this.multiplex;
    if (multiplex === undefined) return;
    this.multiplex = undefined;
    if (existsSync(multiplex.controlPath)) {
      const exit = startPipeline([buildSshExitCommand(this.options.target, multiplex)], { input: 'ignore', output: 'ignore' });
      const timer = setTimeout(() => exit.kill(), 5000);
      await exit.done.finally(() => clearTimeout(timer));
    }
    rmSync(dirname(multiplex.controlPath), { recursive: true, force: true });
  }

  private start(stages: Command[], options: PipelineOptions): Pipeline {
    const pipe = startPipeline(stages, options);
    this.running.add(pipe);
    void pipe.done.finally(() => this.running.delete(pipe));
    return pipe;
  }

  /** An ssh running `script` on the NAS over the shared connection, ended there after `wallClockSec` (0: never). */
  private ssh(script: string, wallClockSec: number): Command {
    return buildSshCommand(this.options.target, script, { multiplex: this.sharing(), wallClockSec });
  }

  /** The shared connection's socket and ssh's log, in a private directory made on first use. */
  private sharing(): SshMultiplex {
    if (this.multiplex === undefined) {
      const dir = mkdtempSync(join(tmpdir(), 'kss-ssh-'));
      this.multiplex = { controlPath: join(dir, 'master'), logFile: join(dir, 'ssh.log'), persistSec: CONTROL_PERSIST_SEC };
    }
    return this.multiplex;
  }

  /** Where ssh's log ends now: what a command's ssh says is written after it. */
  private logMark(): number {
    try {
      return statSync(this.sharing().logFile).size;
    } catch {
      return 0;
    }
  }

  /** What ssh logged since `mark` (the last 4 KiB of it; other commands may have added lines too). */
  private loggedSince(mark: number): string {
    const file = this.multiplex?.logFile;
    if (file === undefined) return '';
    try {
      const fd = openSync(file, 'r');
      try {
        const size = statSync(file).size;
        const from = Math.max(mark, size - 4096);
        const buffer = Buffer.alloc(Math.max(0, size - from));
        readSync(fd, buffer, 0, buffer.length, from);
        return buffer.toString('utf8');
      } finally {
        closeSync(fd);
      }
    } catch {
      return '';
    }
  }

  private hasLocalZstd(): Promise<boolean> {
    this.localZstd ??= runCommand({ file: 'zstd', args: ['--version'] }).then(
      () => true,
      () => false,
    );
    return this.localZstd;
  }

  /** Runs one script; MISSING is returned, not thrown; ssh's own failures are classified. */
  private async run(script: string, opts: { input?: Buffer; maxOutput?: number } = {}) {
    const nas = new NasSide();
    const wallClockSec = Math.ceil(this.options.opTimeoutMs / 1000) + NAS_SIDE_GRACE_SEC;
    const logMark = this.logMark();
    const pipe = this.start([this.ssh(script, wallClockSec)], { input: opts.input ? 'pipe' : 'ignore', output: 'pipe', onStderrLine: nas.listen(0) });
    // Whatever runs as the NAS account (its .bashrc too) writes this output: it is bounded here, not there.
    const maxOutput = opts.maxOutput ?? SMALL_OUTPUT_MAX_BYTES;
    const chunks: Buffer[] = [];
    let received = 0;
    let flooded: (value: 'flooded') => void = () => undefined;
    const flood = new Promise<'flooded'>((resolve) => (flooded = resolve));
    pipe.stdout!.on('data', (chunk: Buffer) => {
      received += chunk.length;
      if (received <= maxOutput) chunks.push(chunk);
      else flooded('flooded');
    });
    pipe.stdin?.on('error', () => undefined);
    pipe.stdin?.end(opts.input);
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), this.options.opTimeoutMs)));
    const results = await Promise.race([pipe.done, late, flood]).finally(() => clearTimeout(timer));
    if (results === 'flooded') {
      await this.stopBothEnds(pipe, nas);
      throw new IntegrityError(`the NAS (${this.where}) answered a small command with more than ${maxOutput} bytes; it was stopped`, {
        remedy: "something on the NAS account adds output (its shell's startup files?) or a file there is not what kvm-snapshot-sync wrote: check the NAS",
      });
    }
    if (results === 'late') {
      await this.stopBothEnds(pipe, nas);
      throw new NasUnreachableError(`the NAS did not answer within ${this.options.opTimeoutMs / 1000} s (${this.where}); the command was stopped`, {
        remedy: 'check the network and the NAS (kss doctor)',
      });
    }
    const [result] = results as [StageResult];
    this.throwIfSshFailed(result, logMark);
    if (result.exitCode !== 0 && result.exitCode !== scripts.MISSING) throw stageError(result, this.where);
    const stdoutBuffer = Buffer.concat(chunks);
    return { exitCode: result.exitCode, stdoutBuffer, stdout: stdoutBuffer.toString('utf8') };
  }

  /** Throws when ssh itself failed (exit 255: classified by its stderr and what it logged since `logMark`). */
  private throwIfSshFailed(result: StageResult, logMark: number): void {
    if (result.notFound) {
      throw new ToolError('ssh is not installed', 'ssh', undefined, '', { remedy: 'apt-get install openssh-client' });
    }
    if (result.exitCode === scripts.NO_ROOT) {
      throw new NasUnreachableError(`${result.stderrTail.trim()} (${this.where})`, {
        remedy: 'create it on the NAS, or correct "nas" in the configuration',
      });
    }
    const said = result.exitCode === 255 ? `${result.stderrTail}\n${this.loggedSince(logMark)}` : result.stderrTail;
    const failure = classifySshFailure(result.exitCode, said);
    const { host, port } = this.options.target;
    // Quoted, to be pasted as it is; ssh's default stays unquoted for the shell's ~.
    const knownHosts = this.options.target.knownHosts === undefined ? '~/.ssh/known_hosts' : shellQuote(this.options.target.knownHosts);
    const remedies: Record<Exclude<typeof failure, 'remote'>, string> = {
      'host-key': `the NAS host key is unknown or changed. Check it, then record it: ssh-keyscan -p ${port} ${host} >> ${knownHosts} (after ssh-keygen -R '[${host}]:${port}' -f ${knownHosts} if it changed)`,
      auth: `the NAS refused our key: add the public key of ${this.options.target.identity ?? 'root'} to the NAS user's authorized_keys`,
      unreachable: 'check the network and that the NAS runs sshd',
    };
    if (failure !== 'remote') {
      throw new NasUnreachableError(`cannot reach the NAS (${this.where}): ${sshFailureCause(said, result.exitCode)}`, {
        remedy: remedies[failure],
      });
    }
  }

  private protocolError(step: string, reply: string): Error {
    return new Error(`unexpected reply from the NAS during ${step}: ${JSON.stringify(reply.slice(0, 200))}`);
  }
}

/** Parses find's "SIZE MTIME TYPE NAME\0" records. */
export function parseEntries(text: string): NasEntry[] {
  return text
    .split('\0')
    .filter((record) => record !== '')
    .map((record) => {
      const [size, mtime, type, ...name] = record.split(' ');
      return { name: name.join(' '), size: Number(size), mtimeMs: Math.round(Number(mtime) * 1000), isDirectory: type === 'd', isFile: type === 'f' };
    });
}
