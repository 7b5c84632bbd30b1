// What the CLI asks libvirt about a domain, and the definitions it gives it (the hook
// never calls libvirt).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DomainRecord } from '../domain-xml.js';
import { UsageError } from '../errors.js';
import { runCommand } from '../runner.js';
import { libvirtUri, virshCommand } from '../virsh.js';

/** Fails, with `remedy`, unless the domain is shut off: otherwise its disks are in use. */
export async function requireShutOff(domain: string, env: NodeJS.ProcessEnv, remedy: string): Promise<void> {
  const state = (await runCommand(virshCommand(libvirtUri(env), 'domstate', domain))).stdout.trim();
  if (state !== 'shut off') throw new UsageError(`${domain} is ${state}: its disks are in use`, { remedy });
}

/** The domain's persistent definition, as libvirt prints it. */
export async function definitionXml(domain: string, env: NodeJS.ProcessEnv): Promise<string> {
  return (await runCommand(virshCommand(libvirtUri(env), 'dumpxml', '--inactive', domain))).stdout;
}

/** The domain's persistent definition, parsed. */
export async function definedDomain(domain: string, env: NodeJS.ProcessEnv): Promise<DomainRecord> {
  const { parseDomainXml } = await import('../domain-xml.js');
  return parseDomainXml(await definitionXml(domain, env));
}

/** Whether libvirt knows a domain of that name. */
export async function isDefined(domain: string, env: NodeJS.ProcessEnv): Promise<boolean> {
  const { exitCode } = await runCommand({ ...virshCommand(libvirtUri(env), 'domuuid', domain), okExitCodes: [0, 1] });
  return exitCode === 0;
}

/** Defines (or redefines) a domain from XML, through a private temporary file virsh reads. */
export async function defineDomain(xml: string, env: NodeJS.ProcessEnv): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kss-define-'));
  try {
    await writeFile(join(dir, 'domain.xml'), xml, { mode: 0o600 });
    await runCommand(virshCommand(libvirtUri(env), 'define', join(dir, 'domain.xml')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
