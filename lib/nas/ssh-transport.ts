// The NAS over SSH, with the system's OpenSSH client (see lib/nas/transport.ts for the
// contract). Each operation is one ssh invocation running one script from
// lib/nas/remote-scripts.ts; layer data streams through zstd where both ends have it,
// and is hashed on the NAS as it is written (no second read of a large file).
import { createReadStream } from 'node:fs';
import { stat as localStat } from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { randomBytes } from 'node:crypto';
import { IntegrityError, NasFullError, NasUnreachableError, ToolError } from '../errors.js';
import { runCommand, startPipeline, type Command, type StageResult } from '../runner.js';
import { shellJoin } from '../shell-quote.js';
import { receiveFile } from './receive-file.js';
import * as scripts from './remote-scripts.js';
import { buildSshCommand, classifySshFailure, type SshTarget } from './ssh-command.js';
import type { ExclusiveResult, NasEntry, NasTransport, TransferOptions, TransferResult } from './transport.js';

export interface SshTransportOptions {
  target: SshTarget;
  /** The NAS directory, absolute, on the NAS host. */
  root: string;
  /** Deadline of every small operation. */
  opTimeoutMs: number;
  /** Compress layer streams with zstd when both ends have it. */
  compress: boolean;
}

export class SshTransport implements NasTransport {
  readonly where: string;
  private localZstd: Promise<boolean> | undefined;

  constructor(private readonly options: SshTransportOptions) {
    const { user, host, port } = options.target;
    this.where = `ssh ${user === undefined ? '' : `${user}@`}${host}:${port} ${options.root}`;
  }

  async readFile(path: string): Promise<Buffer | undefined> {
    const result = await this.run(scripts.readFileScript(this.options.root, path), { binary: true });
    return result.exitCode === scripts.MISSING ? undefined : result.stdoutBuffer;
  }

  async writeFileAtomic(path: string, data: Buffer): Promise<void> {
    const temp = `${path}.tmp-${randomBytes(4).toString('hex')}`;
    await this.run(scripts.writeFileScript(this.options.root, path, temp), { input: data });
  }

  async stat(path: string): Promise<NasEntry | undefined> {
    const result = await this.run(scripts.statScript(this.options.root, path));
    return result.exitCode === scripts.MISSING ? undefined : parseEntries(result.stdout)[0];
  }

  async list(dir: string): Promise<NasEntry[]> {
    return parseEntries((await this.run(scripts.listScript(this.options.root, dir))).stdout);
  }

  async remove(path: string): Promise<void> {
    await this.run(scripts.removeScript(this.options.root, path));
  }

  async rename(from: string, to: string): Promise<boolean> {
    return (await this.run(scripts.renameScript(this.options.root, from, to))).exitCode !== scripts.MISSING;
  }

  async mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult> {
    const result = await this.run(scripts.mkdirExclusiveScript(this.options.root, path, ownerName), {
      input: ownerData,
      binary: true,
    });
    const text = result.stdoutBuffer.toString('utf8');
    if (text.startsWith('created')) return { created: true };
    const match = /^exists (-?\d+)\n/u.exec(text);
    if (!match) throw this.protocolError('mkdirExclusive', text);
    const owner = result.stdoutBuffer.subarray(match[0].length);
    return { created: false, ownerData: owner.length > 0 ? owner : undefined, ageMs: Number(match[1]) * 1000 };
  }

  async touch(path: string): Promise<void> {
    await this.run(scripts.touchScript(this.options.root, path));
  }

  async putLayer(localPath: string, hash: string, partPath: string, target: string, options: TransferOptions = {}): Promise<TransferResult> {
    const size = (await localStat(localPath)).size;
    const prepared = (await this.run(scripts.prepareUploadScript(this.options.root, partPath, target))).stdout.trim();
    if (prepared === 'published') return { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 };
    const match = /^part (\d+) zstd=([01])$/u.exec(prepared);
    if (!match) throw this.protocolError('prepare upload', prepared);
    const compressed = this.options.compress && match[2] === '1' && (await this.hasLocalZstd());
    const partSize = Number(match[1]);
    const offset = partSize <= size ? partSize : 0;

    const first = await this.sendLayer(localPath, { hash, partPath, target, size, offset, compressed }, options);
    if (first.outcome === 'published') return first.result;
    if (first.outcome === 'mismatch' && offset > 0) {
      // The kept prefix may have been the bad part: start over once.
      const again = await this.sendLayer(localPath, { hash, partPath, target, size, offset: 0, compressed }, options);
      if (again.outcome === 'published') return again.result;
    }
    throw new IntegrityError(`the upload of layer ${hash} to ${this.where} did not verify (${first.detail})`, {
      remedy: `check the local layer with \`kss check\`; ${localPath} may be damaged`,
    });
  }

  private async sendLayer(
    localPath: string,
    job: { hash: string; partPath: string; target: string; size: number; offset: number; compressed: boolean },
    options: TransferOptions,
  ): Promise<{ outcome: 'published' | 'mismatch'; result: TransferResult; detail: string }> {
    const ssh = this.ssh(scripts.receiveUploadScript(this.options.root, { ...job, part: job.partPath }));
    const stages: Command[] = job.compressed ? [{ file: 'zstd', args: ['-1', '-T0', '-cq'] }, ssh] : [ssh];
    const pipe = startPipeline(stages, { input: 'pipe', output: 'capture' });
    let done = job.offset;
    options.onProgress?.(done, job.size);
    const counting = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        done += chunk.length;
        options.onProgress?.(done, job.size);
        callback(null, chunk);
      },
    });
    const sent = pipeline(createReadStream(localPath, { start: job.offset, highWaterMark: 2 ** 20 }), counting, pipe.stdin!).catch(
      (error: unknown) => error,
    );
    const results = await pipe.done;
    const sendError = await sent;
    const sshResult = results[results.length - 1] as StageResult;
    this.throwIfSshFailed(sshResult);
    for (const stage of results) if (stage.exitCode !== 0) throw stageError(stage, this.where);
    if (sendError instanceof Error && (sendError as NodeJS.ErrnoException).code !== 'EPIPE') throw sendError;

    const reply = sshResult.stdout.trim();
    const result: TransferResult = { bytesMoved: job.size - job.offset, alreadyThere: false, resumedFrom: job.offset };
    if (reply === 'published') return { outcome: 'published', result, detail: reply };
    if (reply.startsWith('mismatch')) return { outcome: 'mismatch', result, detail: reply };
    if (reply.startsWith('short')) {
      const stored = reply.slice(6);
      if (/No space left on device|Disk quota exceeded/iu.test(sshResult.stderrTail)) {
        await this.remove(job.partPath);
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

  async getLayer(source: string, hash: string, localPart: string, options: TransferOptions = {}): Promise<TransferResult> {
    const prepared = await this.run(scripts.prepareDownloadScript(this.options.root, source));
    if (prepared.exitCode === scripts.MISSING) {
      throw new IntegrityError(`layer ${hash} is missing on ${this.where} (${source})`, {
        remedy: 'the manifest names a layer the NAS does not have: run `kss doctor`',
      });
    }
    const match = /^size (\d+) zstd=([01])$/u.exec(prepared.stdout.trim());
    if (!match) throw this.protocolError('prepare download', prepared.stdout);
    const size = Number(match[1]);
    const compressed = this.options.compress && match[2] === '1' && (await this.hasLocalZstd());
    return receiveFile({
      localPart,
      hash,
      size,
      what: `layer ${hash} from ${this.where}`,
      onProgress: options.onProgress,
      open: async (offset) => {
        const ssh = this.ssh(scripts.sendDownloadScript(this.options.root, source, offset, compressed));
        const stages: Command[] = compressed ? [ssh, { file: 'zstd', args: ['-dcq'] }] : [ssh];
        const pipe = startPipeline(stages, { input: 'ignore', output: 'pipe' });
        const finished = pipe.done.then((results) => {
          this.throwIfSshFailed(results[0] as StageResult);
          for (const stage of results) if (stage.exitCode !== 0) throw stageError(stage, this.where);
        });
        finished.catch(() => undefined);
        return { stream: pipe.stdout!, finished, abort: () => pipe.kill() };
      },
    });
  }

  async close(): Promise<void> {}

  private ssh(script: string): Command {
    return buildSshCommand(this.options.target, script);
  }

  private hasLocalZstd(): Promise<boolean> {
    this.localZstd ??= runCommand({ file: 'zstd', args: ['--version'] }).then(
      () => true,
      () => false,
    );
    return this.localZstd;
  }

  /** Runs one script; MISSING is returned, not thrown; ssh's own failures are classified. */
  private async run(script: string, opts: { input?: Buffer; binary?: boolean } = {}) {
    const pipe = startPipeline([this.ssh(script)], { input: opts.input ? 'pipe' : 'ignore', output: 'pipe' });
    const chunks: Buffer[] = [];
    pipe.stdout!.on('data', (chunk: Buffer) => chunks.push(chunk));
    pipe.stdin?.on('error', () => undefined);
    pipe.stdin?.end(opts.input);
    const timer = setTimeout(() => pipe.kill(), this.options.opTimeoutMs);
    const [result] = (await pipe.done.finally(() => clearTimeout(timer))) as [StageResult];
    if (result.signal === 'SIGKILL') {
      throw new NasUnreachableError(`the NAS did not answer within ${this.options.opTimeoutMs / 1000} s (${this.where})`, {
        remedy: 'check the network and the NAS; `kss doctor` tests the connection',
      });
    }
    this.throwIfSshFailed(result);
    if (result.exitCode !== 0 && result.exitCode !== scripts.MISSING) throw stageError(result, this.where);
    const stdoutBuffer = Buffer.concat(chunks);
    return { exitCode: result.exitCode, stdoutBuffer, stdout: stdoutBuffer.toString('utf8') };
  }

  private throwIfSshFailed(result: StageResult): void {
    if (result.notFound) {
      throw new ToolError('ssh is not installed', 'ssh', undefined, '', { remedy: 'apt-get install openssh-client' });
    }
    if (result.exitCode === scripts.NO_ROOT) {
      throw new NasUnreachableError(`${result.stderrTail.trim()} (${this.where})`, {
        remedy: 'create it on the NAS, or correct "nas" in the configuration',
      });
    }
    const failure = classifySshFailure(result.exitCode, result.stderrTail);
    const { host, port } = this.options.target;
    const knownHosts = this.options.target.knownHosts ?? '~/.ssh/known_hosts';
    const remedies: Record<Exclude<typeof failure, 'remote'>, string> = {
      'host-key': `the NAS host key is unknown or changed. Check it, then record it: ssh-keyscan -p ${port} ${host} >> ${knownHosts} (after ssh-keygen -R '[${host}]:${port}' -f ${knownHosts} if it changed)`,
      auth: `the NAS refused our key: add the public key of ${this.options.target.identity ?? 'root'} to the NAS user's authorized_keys`,
      unreachable: 'check the network and that the NAS runs sshd; `kss doctor` tests the connection',
    };
    if (failure !== 'remote') {
      throw new NasUnreachableError(`cannot reach the NAS (${this.where}): ${lastLine(result.stderrTail)}`, {
        remedy: remedies[failure],
      });
    }
  }

  private protocolError(step: string, reply: string): Error {
    return new Error(`unexpected reply from the NAS during ${step}: ${JSON.stringify(reply.slice(0, 200))}`);
  }
}

function stageError(stage: StageResult, where: string): ToolError {
  const how = stage.signal ? `was killed by ${stage.signal}` : `failed with exit status ${stage.exitCode}`;
  return new ToolError(`${stage.command.file} ${how} (${where})`, shellJoin([stage.command.file, ...stage.command.args]), stage.exitCode ?? undefined, stage.stderrTail);
}

/** Parses find's "SIZE MTIME TYPE NAME\0" records. */
export function parseEntries(text: string): NasEntry[] {
  return text
    .split('\0')
    .filter((record) => record !== '')
    .map((record) => {
      const [size, mtime, type, ...name] = record.split(' ');
      return { name: name.join(' '), size: Number(size), mtimeMs: Math.round(Number(mtime) * 1000), isDirectory: type === 'd' };
    });
}

function lastLine(text: string): string {
  return text.trim().split('\n').pop() ?? '';
}
