// The ssh command line, as data. Pure. Host keys are always checked
// (StrictHostKeyChecking=yes): an unknown or changed NAS key stops the connection.
import type { Command } from '../runner.js';
import { shellJoin } from '../shell-quote.js';
import { ALIVE_NOTE } from './remote-scripts.js';

export interface SshTarget {
  user: string | undefined;
  host: string;
  port: number;
  identity: string | undefined;
  knownHosts: string | undefined;
  /** Seconds to wait for the TCP connection and the SSH handshake. */
  connectTimeoutSec: number;
  /** Keep-alive: a silent link fails after interval × count seconds. */
  aliveIntervalSec: number;
  aliveCountMax: number;
}

/** Ciphers, fastest first: AES-GCM costs 20–40 % less CPU than the default ChaCha20. */
const CIPHERS = 'aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com';

/**
 * Key exchange: curve25519 ahead of OpenSSH 9's default (the post-quantum hybrid
 * sntrup761x25519), which took ~0.2 s more per connection on a 2-core machine; "^" keeps
 * every default algorithm after it, for NAS servers that lack curve25519.
 */
const KEX = '^curve25519-sha256,curve25519-sha256@libssh.org';

/**
 * Connection sharing: the first ssh of a transport becomes the master of one
 * connection in the background (stdio closed), later ones run over it in ~20 ms instead
 * of a new handshake; an idle master exits after `persistSec`.
 *
 * Every one of them logs to `logFile` (-E) instead of stderr: when the master is the
 * one that notices a dead link, a client over it only exits 255 without a word, and
 * the master's stderr is closed; its words are in the log (sshFailureCause). Stderr is
 * then only the NAS side's.
 */
export interface SshMultiplex {
  controlPath: string;
  logFile: string;
  persistSec: number;
}

/**
 * ssh with our options, running `script` on the NAS as `remoteCommand` wraps it: under
 * a NAS-side wall clock of `wallClockSec` (0: none).
 */
export function buildSshCommand(target: SshTarget, script: string, options: { multiplex?: SshMultiplex; wallClockSec: number }): Command {
  return { file: 'ssh', args: [...sshOptions(target, options.multiplex), '--', target.host, remoteCommand(script, options.wallClockSec)] };
}

/** ssh opening the NAS's SFTP subsystem (lib/nas/sftp-session.ts speaks it on its stdio). */
export function buildSftpCommand(target: SshTarget, multiplex: SshMultiplex): Command {
  return { file: 'ssh', args: [...sshOptions(target, multiplex), '-s', '--', target.host, 'sftp'] };
}

/**
 * Pure: does ssh's failure (its stderr and log) say the NAS's sshd serves no SFTP (then
 * the scripts do its work)? On its own connection ssh says "subsystem request failed";
 * over a shared one it exits 255 without a word. A failure that names a cause (the
 * connection, the key) is not a refusal.
 */
export function sftpRefused(exitCode: number | null | undefined, said: string): boolean {
  if (exitCode !== 255) return false;
  if (/subsystem request failed/u.test(said)) return true;
  return !said.split('\n').some((line) => TELLING.test(line) || /REMOTE HOST IDENTIFICATION HAS CHANGED|No .* host key is known/iu.test(line));
}

/** The note the NAS side writes first on stderr: `kss-pgid N`, N its process group. */
export const PGID_NOTE = 'kss-pgid';

/**
 * What the NAS's login shell is given: the script under coreutils `timeout`, which puts
 * itself in a process group of its own (measured on OpenSSH 9.2: whether the login
 * shell execs the command or forks for it), so that the script's $PPID names the group
 * of every process the script starts; the script tells it first, on stderr, so that a
 * stalled or late command can be ended on the NAS (buildRemoteKillCommand). `timeout`
 * also ends the whole group itself after `wallClockSec` (0: never), even when this
 * side has gone away.
 */
export function remoteCommand(script: string, wallClockSec: number): string {
  return shellJoin(['timeout', '-s', 'KILL', String(wallClockSec), 'sh', '-c', `echo ${PGID_NOTE} $PPID >&2\n${script}`]);
}

/**
 * Pure: does a remote command's failure say the NAS has no `timeout` to run it under
 * (remoteCommand)? Then the login shell could not start it: status 127, and the shell's
 * "not found" for `timeout` (bash, dash, busybox ash and zsh word it differently).
 */
export function missingRemoteTimeout(exitCode: number | null | undefined, stderr: string): boolean {
  return exitCode === 127 && /\btimeout: (command )?not found|command not found: timeout\b/u.test(stderr);
}

const PGID_LINE = new RegExp(`^${PGID_NOTE} (\\d{1,10})$`, 'u');

/** What a line of the NAS side's stderr tells, if it is one of our notes (see remoteCommand, ALIVE_NOTE). */
export function remoteNote(line: string): { pgid: number } | { alive: true } | undefined {
  if (line === ALIVE_NOTE) return { alive: true };
  const match = PGID_LINE.exec(line);
  const pgid = Number(match?.[1]);
  // Never 0 or 1: `kill -- -1` would signal every process of the NAS account.
  return match && pgid >= 2 ? { pgid } : undefined;
}

/** Seconds the kill of a NAS-side group may take to connect: it runs after a failure already. */
const KILL_CONNECT_TIMEOUT_SEC = 5;

/**
 * Ends a NAS-side process group (SIGKILL also ends stopped processes), over a new
 * connection: the shared one, or its session on the NAS, may be what hangs.
 */
export function buildRemoteKillCommand(target: SshTarget, pgid: number): Command {
  if (!Number.isSafeInteger(pgid) || pgid < 2) throw new Error(`internal: ${pgid} is not a process group to end`);
  const fresh = { ...target, connectTimeoutSec: Math.min(target.connectTimeoutSec, KILL_CONNECT_TIMEOUT_SEC) };
  return {
    file: 'ssh',
    args: [...sshOptions(fresh, undefined), '-o', 'ControlMaster=no', '-o', 'ControlPath=none', '--', target.host, shellJoin(['sh', '-c', `kill -s KILL -- -${pgid}`])],
  };
}

/** Tells the master of a shared connection to exit. */
export function buildSshExitCommand(target: SshTarget, multiplex: SshMultiplex): Command {
  return { file: 'ssh', args: [...sshOptions(target, multiplex), '-O', 'exit', '--', target.host] };
}

function sshOptions(target: SshTarget, multiplex: SshMultiplex | undefined): string[] {
  const args = [
    '-T',
    '-o', 'BatchMode=yes', // never prompt: the hook has no terminal
    '-o', 'StrictHostKeyChecking=yes',
    '-o', `ConnectTimeout=${target.connectTimeoutSec}`,
    '-o', `ServerAliveInterval=${target.aliveIntervalSec}`,
    '-o', `ServerAliveCountMax=${target.aliveCountMax}`,
    '-o', `Ciphers=${CIPHERS}`,
    '-o', 'Compression=no', // we compress with zstd where it pays
    // INFO, not ERROR: a dead link ("Timeout, server … not responding.") is said at INFO.
    '-o', 'LogLevel=INFO',
    '-o', `KexAlgorithms=${KEX}`,
  ];
  if (multiplex !== undefined) {
    args.push('-o', 'ControlMaster=auto', '-o', `ControlPath=${sshConfigPath(multiplex.controlPath)}`, '-o', `ControlPersist=${multiplex.persistSec}`);
    args.push('-E', multiplex.logFile);
  }
  if (target.knownHosts !== undefined) args.push('-o', `UserKnownHostsFile=${sshConfigPath(target.knownHosts)}`);
  if (target.identity !== undefined) args.push('-o', 'IdentitiesOnly=yes', '-i', target.identity.replaceAll('%', '%%'));
  if (target.user !== undefined) args.push('-l', target.user);
  args.push('-p', String(target.port));
  return args;
}

/**
 * A path as an ssh -o value: "%" would be read as a token, and whitespace splits the
 * list of files UserKnownHostsFile accepts unless the value is double-quoted.
 */
export function sshConfigPath(path: string): string {
  const escaped = path.replaceAll('%', '%%');
  return /\s/u.test(escaped) ? `"${escaped}"` : escaped;
}

export type SshFailure = 'host-key' | 'auth' | 'unreachable' | 'remote';

/** Lines of ssh's that say nothing about the cause (connection sharing's own chatter). */
const NOISE = /^(mux_client_|muxclient:|Control socket connect|ControlSocket .* already exists|Exit request sent|Shared connection to .* closed)/u;

/** Lines of ssh's that name a cause. */
const TELLING =
  /Host key verification failed|Permission denied|Too many authentication failures|not responding|timed out|Connection refused|No route to host|Network is unreachable|closed by remote host|Connection reset|Connection closed|Could not resolve hostname|Broken pipe|Connection timed out/iu;

/**
 * ssh's own words for why it failed, from what it wrote (its stderr and the new lines
 * of its log): the last line that names a cause, else the last line; never empty.
 */
export function sshFailureCause(text: string, exitCode: number | null): string {
  const lines = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !NOISE.test(line));
  return lines.filter((line) => TELLING.test(line)).at(-1) ?? lines.at(-1) ?? `ssh gave no reason (exit status ${exitCode})`;
}

/** Why ssh failed: 255 is ssh's own failure; anything else is the remote command's status. */
export function classifySshFailure(exitCode: number | null, stderr: string): SshFailure {
  if (exitCode !== 255) return 'remote';
  if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|No .* host key is known/iu.test(stderr)) {
    return 'host-key';
  }
  if (/Permission denied|Too many authentication failures/iu.test(stderr)) return 'auth';
  return 'unreachable';
}
