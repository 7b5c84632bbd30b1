// `kss config`: reads, validates and prints the configuration in effect.
import { readConfig } from '../config.js';
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
    ['retentionDays', String(config.retentionDays)],
    ['retentionGenerations', String(config.retentionGenerations)],
  ];
  for (const [key, value] of rows) out.stdout.write(`${key.padEnd(20)} ${value}\n`);
}
