// What the CLI asks libvirt about a domain (the hook never calls libvirt).
import type { DomainRecord } from '../domain-xml.js';
import { UsageError } from '../errors.js';
import { runCommand } from '../runner.js';
import { libvirtUri, virshCommand } from '../virsh.js';

/** Fails, with `remedy`, unless the domain is shut off: otherwise its disks are in use. */
export async function requireShutOff(domain: string, env: NodeJS.ProcessEnv, remedy: string): Promise<void> {
  const state = (await runCommand(virshCommand(libvirtUri(env), 'domstate', domain))).stdout.trim();
  if (state !== 'shut off') throw new UsageError(`${domain} is ${state}: its disks are in use`, { remedy });
}

/** The domain's persistent definition, parsed. */
export async function definedDomain(domain: string, env: NodeJS.ProcessEnv): Promise<DomainRecord> {
  const { parseDomainXml } = await import('../domain-xml.js');
  return parseDomainXml((await runCommand(virshCommand(libvirtUri(env), 'dumpxml', '--inactive', domain))).stdout);
}
