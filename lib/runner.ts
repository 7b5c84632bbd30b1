// Runs external commands. Commands are data ({file, args}), built by pure functions
// elsewhere; this is the one place that executes them and the only importer of execa.
// Streams of layer data go through startPipeline, whose processes are connected
// stdout-to-stdin by file descriptor, so that bulk bytes never pass through Node.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { constants as osConstants } from 'node:os';
import { delimiter, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { execa } from 'execa';
import { ToolError } from './errors.js';
import { shellJoin } from './shell-quote.js';

export interface Command {
  file: string;
  args: readonly string[];
  /** Exit statuses that mean success for this command (qemu-img compare uses 1 for "differ"). */
  okExitCodes?: readonly number[];
}

export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface RunOptions {
  /** Kill the command and fail after this long; unset means no deadline. */
  timeoutMs?: number;
}

/** Runs a command to completion and returns its output, or throws a ToolError. */
export type Runner = (command: Command, options?: RunOptions) => Promise<RunResult>;

/** Which Debian package provides a tool we call, for the "not installed" remedy. */
const PACKAGE_OF: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  ssh: 'openssh-client',
  zstd: 'zstd',
  rsync: 'rsync',
};

/** The production runner. Output is decoded as UTF-8; the C locale keeps messages stable. */
export const runCommand: Runner = async (command, options = {}) => {
  const display = formatCommand(command);
  const result = await execa(command.file, command.args, {
    reject: false,
    stdin: 'ignore',
    stripFinalNewline: false,
    env: { LC_ALL: 'C' },
    timeout: options.timeoutMs,
    maxBuffer: 64 * 2 ** 20,
  });
  const ok = command.okExitCodes ?? [0];
  if (result.exitCode !== undefined && ok.includes(result.exitCode) && !result.timedOut) {
    return { stdout: result.stdout, stderr: result.stderr, exitCode: result.exitCode };
  }
  const stderrTail = tail(result.stderr, 10);
  if ((result.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    const pkg = PACKAGE_OF[command.file];
    throw new ToolError(`${command.file} is not installed (or not on PATH)`, display, undefined, '', {
      remedy: pkg ? `apt-get install ${pkg}` : `install ${command.file}`,
    });
  }
  const how = result.timedOut
    ? `did not finish within ${options.timeoutMs} ms and was stopped`
    : result.signal
      ? `was killed by ${result.signal}`
      : `failed with exit status ${result.exitCode}`;
  throw new ToolError(`${command.file} ${how}: ${display}`, display, result.exitCode, stderrTail);
};

/** How a command that was not waited for ended (runUnwaited). */
export interface UnwaitedResult {
  /** Its stdout, up to 64 KiB. */
  stdout: string;
  exitCode: number | null;
  /** It could not be started, or was stopped at its deadline. */
  error?: string;
}

/**
 * Starts a command that this process never waits for: its own session, stdin and
 * stderr on /dev/null, neither the process nor its stdout holding this one's event loop,
 * so that this process may end while it runs (it then runs on, its stdout unread).
 * `done` is told how it ended; it is killed after `timeoutMs`. `env` is its whole
 * environment.
 */
export function runUnwaited(command: Command, { env, timeoutMs }: { env: NodeJS.ProcessEnv; timeoutMs: number }, done: (result: UnwaitedResult) => void = () => undefined): void {
  let child: ChildProcess;
  try {
    child = spawn(command.file, command.args, { detached: true, stdio: ['ignore', 'pipe', 'ignore'], env });
  } catch (cause) {
    // Some failures (E2BIG, a NUL in an argument) are thrown, not emitted.
    return done({ stdout: '', exitCode: null, error: (cause as Error).message });
  }
  let stdout = '';
  let error: string | undefined;
  let ended = false;
  const end = (exitCode: number | null) => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    done({ stdout, exitCode, ...(error === undefined ? {} : { error }) });
  };
  const timer = setTimeout(() => {
    error = `did not finish within ${timeoutMs} ms and was stopped`;
    child.kill('SIGKILL');
  }, timeoutMs);
  timer.unref();
  child.on('error', (cause) => {
    error = cause.message;
    if (child.pid === undefined) end(null); // never started: no close follows
  });
  child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout = (stdout + text).slice(0, 65_536)));
  (child.stdout as Socket | null)?.unref();
  child.unref();
  child.on('close', end);
}

/** The first `name` on `path` (absolute directories only) that is an executable file: the one a shell would run. */
export async function findOnPath(name: string, path: string | undefined): Promise<string | undefined> {
  for (const dir of (path ?? '').split(delimiter).filter((d) => d.startsWith('/'))) {
    const file = join(dir, name);
    const found = await stat(file).catch(() => undefined);
    if (found?.isFile() && (found.mode & 0o111) !== 0) return file;
  }
  return undefined;
}

/**
 * Runs a program on this terminal (a viewer: its window, its messages on our stdout and
 * stderr), with `env` as its whole environment, and returns how it exited (128 + the
 * signal's number when a signal ended it, as a shell says).
 */
export function runAttached(command: Command, env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command.file, command.args, { stdio: 'inherit', env });
    child.on('error', (cause) => reject(new ToolError(`${command.file} could not be started: ${cause.message}`, formatCommand(command), undefined, '')));
    child.on('close', (code, signal) => resolve(code ?? 128 + (signal === null ? 0 : (osConstants.signals[signal] ?? 0))));
  });
}

/** How one process of a pipeline ended. */
export interface StageResult {
  command: Command;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  /** The last 20 lines of its stderr. */
  stderrTail: string;
  /** Its stdout, for the last stage when the pipeline captures it. */
  stdout: string;
  /** It could not be started (not installed). */
  notFound: boolean;
}

export interface Pipeline {
  /** The processes, in order (for progress: bytesReadBy). */
  pids: Array<number | undefined>;
  /** The first process's stdin, when the pipeline was started with input 'pipe'. */
  stdin: Writable | null;
  /** The last process's stdout, when started with output 'pipe'. */
  stdout: Readable | null;
  /** Resolves, never rejects, when every process has ended: callers judge the results. */
  done: Promise<StageResult[]>;
  /** Kills every process still running. */
  kill(): void;
}

export interface PipelineOptions {
  /**
   * 'pipe': the caller writes the first stdin; 'ignore': it reads /dev/null; a file:
   * the first process reads it directly (bulk data never passes through Node).
   */
  input: 'pipe' | 'ignore' | { file: string };
  /** 'pipe': the caller reads the last stdout; 'capture': it is collected as text; 'ignore': /dev/null. */
  output: 'pipe' | 'capture' | 'ignore';
  /**
   * Told each line of each process's stderr as it comes (a remote side's notes, read
   * while it runs); a line for which it returns true is left out of that stage's stderrTail.
   */
  onStderrLine?: (stage: number, line: string) => boolean;
}

/**
 * setpriv (util-linux) gives each pipeline process a parent-death signal: if this
 * process is killed, even with SIGKILL, the pipeline dies with it instead of carrying
 * on as orphans (a process that reads its input file itself would otherwise go on).
 */
const SETPRIV = '/usr/bin/setpriv';
const dieWithParent = existsSync(SETPRIV);

/** Starts processes connected stdout-to-stdin, `a | b | c`, in the C locale. */
export function startPipeline(commands: readonly Command[], options: PipelineOptions): Pipeline {
  const children: ChildProcess[] = [];
  const results: Array<Promise<StageResult>> = [];
  const inputFd = typeof options.input === 'object' ? openSync(options.input.file, 'r') : undefined;
  commands.forEach((command, index) => {
    const first = index === 0;
    const last = index === commands.length - 1;
    const previous = children[index - 1];
    const stdin = first ? (inputFd ?? (options.input as 'pipe' | 'ignore')) : (previous?.stdout ?? 'ignore');
    const stdout = last && options.output === 'ignore' ? 'ignore' : 'pipe';
    const [file, args] = dieWithParent ? [SETPRIV, ['--pdeathsig', 'KILL', '--', command.file, ...command.args]] : [command.file, command.args];
    const child = spawn(file, args, { stdio: [stdin, stdout, 'pipe'], env: { ...process.env, LC_ALL: 'C' } });
    // The next process now holds this pipe's read end. Close ours: a reader that never
    // reads would keep the writer from seeing EPIPE when the next process dies, and
    // the writer would block forever on a full pipe.
    if (!first) previous?.stdout?.destroy();
    children.push(child);
    results.push(collectStage(command, child, last && options.output === 'capture', options.onStderrLine && ((line) => options.onStderrLine!(index, line))));
  });
  if (inputFd !== undefined) closeSync(inputFd); // the first process has its own copy
  const lastChild = children[children.length - 1];
  return {
    pids: children.map((child) => child.pid),
    stdin: children[0]?.stdin ?? null,
    stdout: options.output === 'pipe' ? (lastChild?.stdout ?? null) : null,
    done: Promise.all(results),
    kill: () => {
      for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

function collectStage(command: Command, child: ChildProcess, captureStdout: boolean, onLine?: (line: string) => boolean): Promise<StageResult> {
  let stderr = '';
  let stdout = '';
  let partial = ''; // a line not ended yet, when lines are watched
  const keep = (text: string) => (stderr = (stderr + text).slice(-16_384));
  const lines = (text: string) => {
    const parts = (partial + text).split('\n');
    partial = parts.pop() as string;
    for (const line of parts) if (!onLine!(line)) keep(`${line}\n`);
    // A line without end (from a remote side that is not what it should be) is kept bounded.
    if (partial.length > 16_384) {
      if (!onLine!(partial)) keep(partial);
      partial = '';
    }
  };
  child.stderr?.setEncoding('utf8').on('data', onLine ? lines : keep);
  if (captureStdout) child.stdout?.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  return new Promise((resolve) => {
    let notFound = false;
    child.on('error', (error: NodeJS.ErrnoException) => {
      notFound = error.code === 'ENOENT';
    });
    child.on('close', (exitCode, signal) => {
      if (partial !== '' && !onLine!(partial)) keep(partial);
      // Through setpriv, a command that cannot be run is its exit 127 and a message.
      notFound ||= exitCode === 127 && /failed to execute/u.test(stderr);
      resolve({ command, exitCode, signal, stderrTail: tail(stderr, 20), stdout, notFound });
    });
  });
}

/** A failed pipeline stage as a ToolError; `where` says what it was talking to. */
export function stageError(stage: StageResult, where: string): ToolError {
  const how = stage.signal ? `was killed by ${stage.signal}` : `failed with exit status ${stage.exitCode}`;
  return new ToolError(`${stage.command.file} ${how} (${where})`, formatCommand(stage.command), stage.exitCode ?? undefined, stage.stderrTail);
}

/**
 * Bytes a running process has read so far (Linux: /proc/PID/io rchar), for progress of
 * a process that reads a file itself; undefined once it has ended.
 */
export function bytesReadBy(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /^rchar: (\d+)$/mu.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How far a running process has read the file it has as stdin (Linux: the offset in
 * /proc/PID/fdinfo/0). Unlike rchar it also counts reads made by another process the
 * descriptor was passed to: an ssh sharing a connection hands its stdin to the master.
 * Undefined once it has ended.
 */
export function stdinOffsetOf(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const match = /^pos:\s+(\d+)$/mu.exec(readFileSync(`/proc/${pid}/fdinfo/0`, 'utf8'));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The command as a person could paste it into a POSIX shell. */
export function formatCommand(command: Command): string {
  return shellJoin([command.file, ...command.args]);
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}
