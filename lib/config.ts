// The configuration file: `validateConfig` (pure) turns parsed JSON into a Config or a
// ConfigError that names the key and the file; `readConfig` does the I/O around it.
// Defaults live here and nowhere else.
import { readFile } from 'node:fs/promises';
import { hostname as osHostname } from 'node:os';
import { isAbsolute } from 'node:path';
import { ConfigError } from './errors.js';

export const DEFAULT_CONFIG_PATH = '/etc/kvm-snapshot-sync/config.json';

/** Where the NAS is: a directory (mounted share or local disk), or a path over SSH. */
export type NasLocation =
  | { kind: 'dir'; path: string }
  | { kind: 'ssh'; user: string | undefined; host: string; port: number; path: string };

export interface Config {
  /** The file this came from, for messages. */
  file: string;
  /** This host's name as recorded on the NAS (leases, generations). */
  host: string;
  nas: NasLocation;
  /** SSH private key; unset means ssh's own default. */
  sshIdentity: string | undefined;
  /** known_hosts file used to check the NAS host key; unset means ssh's own default. */
  sshKnownHosts: string | undefined;
  /** Per-domain local state: last synced generation, unpushed generations, flags, locks. */
  stateDir: string;
  /** Per-domain hook and push logs. */
  logDir: string;
  /** Where libvirt keeps the emulated TPMs' state, one directory per domain UUID (lib/sync/state-volumes.ts). */
  swtpmDir: string;
  /** How many sealed layers a disk's chain may have before compaction merges some. */
  maxChainDepth: number;
  /** How many files the NAS head's chain of a disk may have before a host publishes merged layers (lib/sync/nas-upkeep.ts). */
  nasChainDepth: number;
  /** Every generation of the last this many days is kept on the NAS (lib/nas/retention.ts)... */
  retentionDays: number;
  /** ...and one a day up to this age... */
  retentionDailyDays: number;
  /** ...and one a week up to this age; older ones are removed... */
  retentionWeeklyDays: number;
  /** ...but the newest this many generations of the head's history are always kept. */
  retentionGenerations: number;
  /** The losing side of a conflict is kept at most this many days (named snapshots until deleted). */
  retentionBranchDays: number;
  /** A layer transfer that moves no byte for this many seconds is stopped (both transports). */
  stallSeconds: number;
  /** The domains' <cpu> is this host's own, not part of the definition that travels (lib/definition.ts). */
  cpuPerHost: boolean;
  /**
   * While a managed VM runs, its writes are frozen into a checkpoint and pushed every this
   * many seconds (0: never; lib/checkpoint/).
   */
  checkpointSeconds: number;
  /** ...and sooner when its top has grown by more than this many bytes since the last one (0: only by time). */
  checkpointBytes: number;
  /** A checkpoint's push reads at most this many MB (10^6 bytes) a second (0: no cap; lib/nas/pace.ts). */
  checkpointRateMBps: number;
  /** Tell the person at this machine's desktop, if one is logged in, when a start waits and when a stop's work is on the NAS (lib/desktop/). */
  notify: boolean;
  /** The libvirt URI of each other host, by its `host` name (peerUri gives the default). */
  peers: Record<string, string>;
}

export const DEFAULTS = {
  stateDir: '/var/lib/kvm-snapshot-sync',
  logDir: '/var/log/kvm-snapshot-sync',
  swtpmDir: '/var/lib/libvirt/swtpm',
  maxChainDepth: 8,
  nasChainDepth: 16,
  retentionDays: 7,
  retentionDailyDays: 30,
  retentionWeeklyDays: 182,
  retentionGenerations: 10,
  retentionBranchDays: 90,
  stallSeconds: 30,
  cpuPerHost: false,
  notify: true,
  checkpointSeconds: 300,
  checkpointBytes: 2 ** 30,
  checkpointRateMBps: 0,
} as const;

/** Every key a configuration file may hold (the README's Configuration table lists each). */
export const CONFIG_KEYS = [
  'host',
  'nas',
  'sshIdentity',
  'sshKnownHosts',
  'stateDir',
  'logDir',
  'swtpmDir',
  'maxChainDepth',
  'nasChainDepth',
  'retentionDays',
  'retentionDailyDays',
  'retentionWeeklyDays',
  'retentionGenerations',
  'retentionBranchDays',
  'stallSeconds',
  'cpuPerHost',
  'notify',
  'checkpointSeconds',
  'checkpointBytes',
  'checkpointRateMBps',
  'peers',
] as const;
type Key = (typeof CONFIG_KEYS)[number];

const HOST_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/u;

/** Validates parsed config JSON; `defaultHost` is used when `host` is not set. */
export function validateConfig(raw: unknown, file: string, defaultHost: string): Config {
  const fail = (key: Key | undefined, problem: string): never => {
    const where = key === undefined ? file : `"${key}" in ${file}`;
    throw new ConfigError(`invalid configuration: ${where}: ${problem}`, {
      remedy: `edit ${file} (the README's "Configuration" section lists every key)`,
    });
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(undefined, 'must be a JSON object');
  const obj = raw as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) {
      throw new ConfigError(`invalid configuration: unknown key "${key}" in ${file}`, {
        remedy: `remove or correct it in ${file}; the known keys are ${CONFIG_KEYS.join(', ')}`,
      });
    }
  }

  const optionalString = (key: Key): string | undefined => {
    const value = obj[key];
    if (value === undefined) return undefined;
    if (typeof value !== 'string' || value === '') return fail(key, 'must be a non-empty string');
    return value;
  };
  const optionalPath = (key: Key): string | undefined => {
    const value = optionalString(key);
    if (value !== undefined && !isAbsolute(value)) fail(key, `must be an absolute path, got "${value}"`);
    return value;
  };

  const host = optionalString('host') ?? defaultHost;
  if (!HOST_NAME.test(host)) {
    fail('host', `"${host}" is not a usable host name (letters, digits, ".", "_", "-"; at most 63)`);
  }

  const nasText = optionalString('nas');
  if (nasText === undefined) return fail('nas', 'is required: a directory path or ssh://user@host[:port]/path');
  let nas: NasLocation;
  try {
    nas = parseNasLocation(nasText);
  } catch (error) {
    return fail('nas', (error as Error).message);
  }

  const wholeNumber = (key: keyof typeof DEFAULTS & Key, min: number, max: number): number => {
    const value = obj[key] ?? DEFAULTS[key];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      fail(key, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
    }
    return value as number;
  };

  const flag = (key: 'cpuPerHost' | 'notify'): boolean => {
    const value = obj[key] ?? DEFAULTS[key];
    if (typeof value !== 'boolean') fail(key, `must be true or false, got ${JSON.stringify(value)}`);
    return value as boolean;
  };

  return {
    file,
    host,
    nas,
    sshIdentity: optionalPath('sshIdentity'),
    sshKnownHosts: optionalPath('sshKnownHosts'),
    stateDir: optionalPath('stateDir') ?? DEFAULTS.stateDir,
    logDir: optionalPath('logDir') ?? DEFAULTS.logDir,
    swtpmDir: optionalPath('swtpmDir') ?? DEFAULTS.swtpmDir,
    maxChainDepth: wholeNumber('maxChainDepth', 2, 64),
    nasChainDepth: wholeNumber('nasChainDepth', 2, 64),
    retentionDays: wholeNumber('retentionDays', 1, 36_500),
    retentionDailyDays: wholeNumber('retentionDailyDays', 0, 36_500),
    retentionWeeklyDays: wholeNumber('retentionWeeklyDays', 0, 36_500),
    retentionGenerations: wholeNumber('retentionGenerations', 1, 10_000),
    retentionBranchDays: wholeNumber('retentionBranchDays', 1, 36_500),
    // Below 5 s a busy NAS or a loaded 2-core host would be taken for a dead one.
    stallSeconds: wholeNumber('stallSeconds', 5, 3600),
    cpuPerHost: flag('cpuPerHost'),
    notify: flag('notify'),
    checkpointSeconds: wholeNumber('checkpointSeconds', 0, 86_400),
    checkpointBytes: wholeNumber('checkpointBytes', 0, 2 ** 50),
    checkpointRateMBps: wholeNumber('checkpointRateMBps', 0, 100_000),
    peers: validPeers(obj.peers, (problem) => fail('peers', problem)),
  };
}

/** `peers`: host names to libvirt URIs of the system daemon there. */
function validPeers(value: unknown, fail: (problem: string) => never): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return fail('must be an object of host names to libvirt URIs, like {"laptop": "qemu+ssh://root@laptop/system"}');
  const peers: Record<string, string> = {};
  for (const [host, uri] of Object.entries(value)) {
    if (!HOST_NAME.test(host)) fail(`"${host}" is not a host name`);
    if (typeof uri !== 'string') return fail(`the URI of "${host}" must be a string`);
    const problem = libvirtUriProblem(uri);
    if (problem !== undefined) fail(`the URI of "${host}": ${problem}`);
    peers[host] = uri;
  }
  return peers;
}

/** Why `uri` is not a libvirt URI of a host's system QEMU daemon, or undefined. */
export function libvirtUriProblem(uri: string): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return `"${uri}" is not a URI (like qemu+ssh://root@laptop/system)`;
  }
  if (!/^qemu(\+[a-z0-9]+)?:$/u.test(url.protocol)) return `"${uri}" is not a libvirt QEMU URI (qemu+ssh://…, qemu+tls://…, qemu:///…)`;
  // The VMs are the system daemon's; a session URI would find none of them.
  if (url.pathname !== '/system') return `"${uri}" must name the system daemon (…/system)`;
  return undefined;
}

/**
 * The libvirt URI that reaches the VMs of another host: `peers` in the configuration,
 * else qemu+ssh to the host by its name (as ssh resolves it; ~/.ssh/config may say more).
 */
export function peerUri(config: Pick<Config, 'peers'>, host: string): string {
  return config.peers[host] ?? `qemu+ssh://${host}/system`;
}

/** Parses `/abs/dir`, `file:///abs/dir` or `ssh://[user@]host[:port]/abs/path`. */
export function parseNasLocation(text: string): NasLocation {
  if (text.startsWith('/')) return { kind: 'dir', path: text };
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`"${text}" is neither an absolute directory nor an ssh:// URL`);
  }
  const path = decodeURIComponent(url.pathname);
  if (url.protocol === 'file:') {
    if (url.host !== '') throw new Error(`"${text}": a file: URL names a local directory (file:///path)`);
    return { kind: 'dir', path };
  }
  if (url.protocol !== 'ssh:') throw new Error(`"${text}": only directories and ssh:// URLs are supported`);
  if (url.hostname === '') throw new Error(`"${text}" names no host`);
  if (path === '' || path === '/') throw new Error(`"${text}" names no directory on the NAS (ssh://host/path)`);
  if (url.password !== '') throw new Error(`"${text}" holds a password: use an SSH key (sshIdentity) instead`);
  return {
    kind: 'ssh',
    user: url.username === '' ? undefined : decodeURIComponent(url.username),
    host: url.hostname.replace(/^\[(.*)\]$/u, '$1'),
    port: url.port === '' ? 22 : Number(url.port),
    path,
  };
}

/** Which config file to read: the --config flag, then $KSS_CONFIG, then the default. */
export function configPath(flag: string | undefined, env: NodeJS.ProcessEnv): string {
  return flag ?? env.KSS_CONFIG ?? DEFAULT_CONFIG_PATH;
}

/** Reads and validates the config file. */
export async function readConfig(file: string, defaultHost: string = osHostname()): Promise<Config> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const problem = code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? String(error)})`;
    throw new ConfigError(`configuration file ${file} ${problem}`, {
      remedy: 'run install.sh to create it, or point KSS_CONFIG / --config at one',
      cause: error,
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`configuration file ${file} is not valid JSON: ${(error as Error).message}`, {
      remedy: `correct the JSON syntax in ${file}`,
      cause: error,
    });
  }
  return validateConfig(raw, file, defaultHost);
}
