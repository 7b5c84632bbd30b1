// A simulated NAS for tests and benchmarks: a real sshd in its own network namespace,
// reached through a veth pair shaped to 1 Gbit/s in both directions (tc tbf), with its
// own host key, a client key and a known_hosts file. sshd gets a private /run (it
// needs /run/sshd) without touching the real one.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { SshTarget } from '../../lib/nas/ssh-command.js';

export const SSH_NAS_TOOLS = ['ip', 'tc', 'ssh', 'ssh-keygen', '/usr/sbin/sshd', 'zstd', 'openssl'];

export interface SshNas {
  /** Where the NAS keeps its files (a directory on this machine, served by sshd). */
  root: string;
  /** The target for an SshTransport, with short keep-alives so tests notice a cut link fast. */
  target: SshTarget;
  /** The shell words of an ssh command line to the NAS (for baselines). */
  sshArgs: string[];
  /** This side of the veth pair (take it down to cut the link). */
  hostInterface: string;
  setLink(up: boolean): void;
  /**
   * The NAS-side commands running now: every process in the NAS's network namespace
   * but the sshd processes themselves (the listener and one per connection); a process
   * that has ended but is not reaped yet is left out. PIDs are shared with the namespace.
   */
  commands(): number[];
  /** The sshd processes that serve connections (all but the listener): an SFTP session served in-process runs in them. */
  sessions(): number[];
  /**
   * Sets what the NAS account's shell runs first in every SSH session (its ~/.bashrc,
   * in the NAS's own private home); undefined: nothing.
   */
  setShellStartup(text: string | undefined): void;
  stop(): void;
}

/**
 * The live processes in the network namespace of process `inside` that are `wanted`
 * (by name and PID). Orphans count too: a NAS-side command whose parent died is still in the
 * namespace sshd runs in, though no longer under sshd.
 */
function processesInNetns(inside: number, wanted: (name: string, pid: number) => boolean): number[] {
  const netns = readlinkSync(`/proc/${inside}/ns/net`);
  const found: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/u.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (wanted(name, Number(entry)) && state !== 'Z' && state !== 'X' && readlinkSync(`/proc/${entry}/ns/net`) === netns) found.push(Number(entry));
    } catch {
      /* it ended meanwhile */
    }
  }
  return found;
}

let counter = 0;

function sh(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * Starts the NAS; `root` may be given (a small tmpfs, a path with odd characters), and
 * the link's `rate` in tc's words (default 1gbit; a slower one makes a start wait);
 * `sftp`: whether sshd serves SFTP (in-process, as `internal-sftp`; default) or not.
 */
export async function startSshNas(options: { root?: string; shape?: boolean; rate?: string; sftp?: 'internal' | 'none' } = {}): Promise<SshNas> {
  counter += 1;
  const id = `${process.pid % 10000}${counter}`;
  const subnet = 1 + ((process.pid * 7 + counter) % 250);
  const ns = `kss-nas-${id}`;
  const hostIf = `kssh${id}`;
  const nasIf = `kssn${id}`;
  const hostIp = `10.252.${subnet}.1`;
  const nasIp = `10.252.${subnet}.2`;
  const dir = mkdtempSync(join(tmpdir(), 'kss-sshnas-'));
  const root = options.root ?? join(dir, 'nas');
  mkdirSync(root, { recursive: true });
  let sshd: ChildProcess | undefined;

  const stop = () => {
    sshd?.kill('SIGKILL');
    try {
      sh('ip', ['netns', 'del', ns]);
    } catch {
      /* already gone */
    }
    try {
      sh('ip', ['link', 'del', hostIf]);
    } catch {
      /* deleted with the namespace */
    }
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nasIf]);
    sh('ip', ['link', 'set', nasIf, 'netns', ns]);
    sh('ip', ['addr', 'add', `${hostIp}/30`, 'dev', hostIf]);
    sh('ip', ['link', 'set', hostIf, 'up']);
    sh('ip', ['netns', 'exec', ns, 'ip', 'addr', 'add', `${nasIp}/30`, 'dev', nasIf]);
    sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', nasIf, 'up']);
    sh('ip', ['netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up']);
    if (options.shape !== false) {
      const tbf = ['qdisc', 'add', 'dev', '', 'root', 'tbf', 'rate', options.rate ?? '1gbit', 'burst', '256kb', 'latency', '10ms'];
      sh('tc', tbf.map((word) => (word === '' ? hostIf : word)));
      sh('ip', ['netns', 'exec', ns, 'tc', ...tbf.map((word) => (word === '' ? nasIf : word))]);
    }

    sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'host_key')]);
    sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'client key')]);
    writeFileSync(join(dir, 'authorized_keys'), readFileSync(join(dir, 'client key.pub')));
    const port = 2222;
    writeFileSync(join(dir, 'known hosts'), `[${nasIp}]:${port} ${readFileSync(join(dir, 'host_key.pub'), 'utf8')}`);
    writeFileSync(
      join(dir, 'sshd_config'),
      [
        `Port ${port}`,
        `ListenAddress ${nasIp}`,
        `HostKey ${join(dir, 'host_key')}`,
        `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
        `PidFile ${join(dir, 'sshd.pid')}`,
        'UsePAM no',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'StrictModes no',
        ...(options.sftp === 'none' ? [] : ['Subsystem sftp internal-sftp']),
        'MaxStartups 100',
        'MaxSessions 100',
        'ClientAliveInterval 2',
        'ClientAliveCountMax 3',
      ].join('\n'),
    );
    sshd = spawn(
      'ip',
      ['netns', 'exec', ns, 'sh', '-c', `mount -t tmpfs kss-run /run && mount -t tmpfs kss-home /root && mkdir -m 755 /run/sshd && exec /usr/sbin/sshd -D -e -f "$1"`, 'sh', join(dir, 'sshd_config')],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    sshd.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
    const deadline = Date.now() + 10_000;
    while (!log.includes('Server listening')) {
      if (Date.now() > deadline || sshd.exitCode !== null) throw new Error(`sshd did not start: ${log}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } catch (error) {
    stop();
    throw error;
  }

  const target: SshTarget = {
    user: 'root',
    host: nasIp,
    port: 2222,
    identity: join(dir, 'client key'),
    knownHosts: join(dir, 'known hosts'),
    connectTimeoutSec: 5,
    aliveIntervalSec: 1,
    aliveCountMax: 3,
  };
  return {
    root,
    target,
    sshArgs: [
      '-o', 'BatchMode=yes',
      '-o', `UserKnownHostsFile="${target.knownHosts}"`,
      '-o', 'IdentitiesOnly=yes',
      '-i', target.identity as string,
      '-p', String(target.port),
      '-l', 'root',
    ],
    hostInterface: hostIf,
    setLink: (up) => sh('ip', ['link', 'set', hostIf, up ? 'up' : 'down']),
    // `ip netns exec` and the sh in front of sshd both exec: the spawned pid is sshd's.
    commands: () => processesInNetns(sshd?.pid as number, (name) => name !== 'sshd'),
    sessions: () => processesInNetns(sshd?.pid as number, (name, pid) => name === 'sshd' && pid !== sshd?.pid),
    // The home is a tmpfs in sshd's mount namespace, reached through /proc/PID/root.
    setShellStartup: (text) => {
      const bashrc = `/proc/${sshd?.pid as number}/root/root/.bashrc`;
      if (text === undefined) rmSync(bashrc, { force: true });
      else writeFileSync(bashrc, text);
    },
    stop,
  };
}
