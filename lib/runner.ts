// Runs external commands. Commands are data ({file, args}), built by pure functions
// elsewhere; this is the one place that executes them and the only importer of execa.
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

/** The command as a person could paste it into a POSIX shell. */
export function formatCommand(command: Command): string {
  return shellJoin([command.file, ...command.args]);
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split('\n').slice(-lines).join('\n');
}
