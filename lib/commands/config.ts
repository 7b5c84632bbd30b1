// `kss config`: reads, validates and prints the configuration in effect; `kss config
// set` changes keys of the file (install.sh uses it).
import { mkdir, readFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { DEFAULTS, peerUri, readConfig, validateConfig } from '../config.js';
import { writeFileAtomic } from '../durable-fs.js';
import { UsageError } from '../errors.js';
import { printJson, type Output } from './output.js';

/** Prints the validated configuration, defaults filled in. */
export async function showConfig(options: { file: string; json: boolean }, out: Output): Promise<void> {
  const config = await readConfig(options.file);
  if (options.json) return printJson(out, config);
  const nas =
    config.nas.kind === 'dir'
      ? config.nas.path
      : `ssh ${config.nas.user ?? '(ssh default user)'}@${config.nas.host} port ${config.nas.port}, ${config.nas.path}`;
  const rows: Array<[string, string]> = [
    ['file', config.file],
    ['host', config.host],
    ['nas', nas],
    ['sshIdentity', config.sshIdentity ?? '(ssh default)'],
    ['sshKnownHosts', config.sshKnownHosts ?? '(ssh default)'],
    ['stateDir', config.stateDir],
    ['logDir', config.logDir],
    ['maxChainDepth', String(config.maxChainDepth)],
    ['nasChainDepth', String(config.nasChainDepth)],
    ['retentionDays', String(config.retentionDays)],
    ['retentionDailyDays', String(config.retentionDailyDays)],
    ['retentionWeeklyDays', String(config.retentionWeeklyDays)],
    ['retentionGenerations', String(config.retentionGenerations)],
    ['retentionBranchDays', String(config.retentionBranchDays)],
    ['stallSeconds', String(config.stallSeconds)],
    ['swtpmDir', config.swtpmDir],
    ['cpuPerHost', String(config.cpuPerHost)],
    ['notify', String(config.notify)],
    ['checkpointSeconds', String(config.checkpointSeconds)],
    ['checkpointBytes', String(config.checkpointBytes)],
    ['checkpointRateMBps', String(config.checkpointRateMBps)],
    ['peers', Object.entries(config.peers).map(([host, uri]) => `${host} ${uri}`).join(', ') || `(${peerUri({ peers: {} }, 'HOST')} for each)`],
  ];
  for (const [key, value] of rows) out.stdout.write(`${key.padEnd(20)} ${value}\n`);
}

/** Keys whose values are whole numbers in the file, and those that are true or false: by the type of their default. */
const keysWhoseDefaultIs = (type: 'number' | 'boolean') => new Set(Object.entries(DEFAULTS).flatMap(([key, value]) => (typeof value === type ? [key] : [])));
const NUMERIC = keysWhoseDefaultIs('number');
const BOOLEAN = keysWhoseDefaultIs('boolean');

/** A setting's value as the file holds it: a number or true/false where the key takes one, else the text. */
function settingValue(key: string, value: string): unknown {
  if (NUMERIC.has(key) && /^\d+$/u.test(value)) return Number(value);
  if (BOOLEAN.has(key) && (value === 'true' || value === 'false')) return value === 'true';
  return value;
}

/**
 * `kss config set KEY=VALUE…`: changes only the keys named, creating the file when it
 * does not exist; the result must be a valid configuration, else nothing is written.
 * A file that would not change is not rewritten.
 */
export async function setConfig(options: { file: string; settings: string[] }, out: Output): Promise<void> {
  const current = await readFile(options.file, 'utf8').then(
    (text) => JSON.parse(text) as Record<string, unknown>,
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    },
  );
  const next: Record<string, unknown> = { ...current };
  for (const setting of options.settings) {
    // peers.HOST=URI sets one host's entry of the peers object (an empty URI removes it).
    const match = /^([A-Za-z]+)(?:\.([^=]+))?=(.*)$/su.exec(setting);
    if (!match || (match[2] !== undefined && match[1] !== 'peers')) {
      throw new UsageError(`"${setting}" is not KEY=VALUE (or peers.HOST=URI)`, { remedy: 'for example: kss config set nas=/mnt/nas/kss' });
    }
    const [, key, host, value] = match as unknown as [string, string, string | undefined, string];
    if (host === undefined) next[key] = settingValue(key, value);
    else {
      const peers = { ...(next.peers as Record<string, unknown> | undefined) };
      if (value === '') delete peers[host];
      else peers[host] = value;
      next.peers = peers;
    }
  }
  validateConfig(next, options.file, hostname()); // throws, naming the key, before anything is written
  const changed = Object.keys(next).filter((key) => JSON.stringify(current?.[key]) !== JSON.stringify(next[key]));
  if (current !== undefined && changed.length === 0) {
    out.stderr.write(`kss: ${options.file} unchanged\n`);
    return;
  }
  await mkdir(dirname(options.file), { recursive: true, mode: 0o755 });
  await writeFileAtomic(options.file, Buffer.from(`${JSON.stringify(next, null, 2)}\n`));
  out.stderr.write(`kss: ${current === undefined ? 'created' : 'updated'} ${options.file} (${changed.join(', ')})\n`);
}
