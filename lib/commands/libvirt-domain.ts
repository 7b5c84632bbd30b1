// What the CLI asks libvirt about a domain, and the definitions it gives it (the hook
// never calls libvirt).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HostFacts } from '../definition-check.js';
import type { DomainRecord } from '../domain-xml.js';
import type { LibvirtDefinitions } from '../sync/definitions.js';
import { ToolError, UsageError } from '../errors.js';
import { runCommand } from '../runner.js';
import { libvirtUri, virshCommand } from '../virsh.js';

/** Fails, with `remedy`, unless the domain is shut off: otherwise its disks are in use. */
export async function requireShutOff(domain: string, env: NodeJS.ProcessEnv, remedy: string): Promise<void> {
  const state = (await runCommand(virshCommand(libvirtUri(env), 'domstate', domain))).stdout.trim();
  if (state !== 'shut off') throw new UsageError(`${domain} is ${state}: its disks are in use`, { remedy });
}

/** virsh domstate's words for a domain whose QEMU runs (its disks in use, a screen to show). */
export function isRunningState(state: string): boolean {
  return state === 'running' || state === 'paused' || state === 'in shutdown' || state === 'pmsuspended';
}

/** Whether the domain runs here, as libvirt says; undefined when libvirt says nothing of it (no such domain, libvirtd not answering). */
export async function runsHere(domain: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<boolean | undefined> {
  const { exitCode, stdout } = await runCommand({ ...virshCommand(libvirtUri(env), 'domstate', domain), okExitCodes: [0, 1] }, { timeoutMs });
  return exitCode === 0 ? isRunningState(stdout.trim()) : undefined;
}

/** The domain's persistent definition, as libvirt prints it. */
export async function definitionXml(domain: string, env: NodeJS.ProcessEnv, timeoutMs?: number): Promise<string> {
  return (await runCommand(virshCommand(libvirtUri(env), 'dumpxml', '--inactive', domain), { timeoutMs })).stdout;
}

/** How long background work waits for one answer of libvirt's. */
export const LIBVIRT_DEADLINE_MS = 60_000;

/**
 * libvirt's definitions, as lib/sync/definitions.ts uses them; `timeoutMs` bounds each
 * call (background work: a libvirtd that does not answer must not hold the domain lock for ever).
 */
export function libvirtDefinitions(env: NodeJS.ProcessEnv, timeoutMs?: number): LibvirtDefinitions {
  return {
    read: (domain) => definitionXml(domain, env, timeoutMs),
    define: (xml) => defineDomain(xml, env, timeoutMs),
    hostFacts: (guest) => readHostFacts(guest, env, timeoutMs),
  };
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
export async function defineDomain(xml: string, env: NodeJS.ProcessEnv, timeoutMs?: number): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'kss-define-'));
  try {
    await writeFile(join(dir, 'domain.xml'), xml, { mode: 0o600 });
    await runCommand(virshCommand(libvirtUri(env), 'define', join(dir, 'domain.xml')), { timeoutMs });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Where libvirt's system daemon keeps each domain's UEFI variables. */
const NVRAM_DIR = '/var/lib/libvirt/qemu/nvram';

/**
 * What `kss clone` checks a definition from the NAS against: the domains libvirt knows
 * here (with their UUIDs and disks), the directories of its storage pools of files, and
 * the emulator and firmware `virsh domcapabilities` gives for the guest's type, arch and
 * machine. Reads only.
 */
export async function readHostFacts(guest: { type: string | undefined; arch: string | undefined; machine: string | undefined }, env: NodeJS.ProcessEnv, timeoutMs?: number): Promise<HostFacts> {
  const { parseXmlTree, parseDomainXml } = await import('../domain-xml.js');
  const { poolDirOf, readDomainCapabilities } = await import('../definition-check.js');
  const uri = libvirtUri(env);
  const virsh = async (...args: string[]) => (await runCommand(virshCommand(uri, ...args), { timeoutMs })).stdout;
  const lines = (text: string) => text.split('\n').map((line) => line.trim()).filter(Boolean);

  const domains: Array<HostFacts['domains'][number]> = [];
  for (const name of lines(await virsh('list', '--all', '--name'))) {
    // one undefined meanwhile is gone: it has nothing left to collide with
    const dumped = await runCommand({ ...virshCommand(uri, 'dumpxml', '--inactive', name), okExitCodes: [0, 1] }, { timeoutMs });
    if (dumped.exitCode !== 0) continue;
    const domain = await parseDomainXml(dumped.stdout);
    domains.push({ name: domain.name, uuid: domain.uuid, disks: domain.disks.filter((d) => d.device === 'disk' && d.path !== undefined).map((d) => d.path as string) });
  }
  const poolDirs: string[] = [];
  for (const pool of lines(await virsh('pool-list', '--all', '--name'))) {
    const dir = poolDirOf(await parseXmlTree(await virsh('pool-dumpxml', pool)));
    if (dir !== undefined) poolDirs.push(dir);
  }
  // From the NAS: passed as --flag=value and only when a plain name, so that none is taken for an option.
  const query = Object.entries({ virttype: guest.type === 'kvm' || guest.type === 'qemu' ? guest.type : undefined, arch: guest.arch, machine: guest.machine }).flatMap(([flag, value]) =>
    value !== undefined && /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/u.test(value) ? [`--${flag}=${value}`] : [],
  );
  const caps = readDomainCapabilities(await parseXmlTree(await virsh('domcapabilities', ...query)));
  if (caps.emulator === undefined) throw new ToolError(`virsh domcapabilities ${query.join(' ')} names no emulator`, 'virsh domcapabilities', 0, '', { remedy: 'apt-get install qemu-system-x86 (or the QEMU for the guest\'s arch)' });
  return { domains, poolDirs, emulator: caps.emulator, loaders: caps.loaders, nvramDir: NVRAM_DIR };
}
