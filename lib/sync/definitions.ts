// The domain's definition on this host, split as lib/definition.ts says:
//
//   <stateDir>/domains/<domain>/host.xml               this host's own part
//   <stateDir>/domains/<domain>/definitions/<sha>.xml  portable parts made or put in place here
//   <stateDir>/domains/<domain>/definition-before-<time>.xml
//                                                      a definition changed here and never
//                                                      pushed, replaced by a newer one
//
// and LocalState.definition, the hash of the portable part that libvirt's definition here
// was last captured as or put in place from. Capturing (the stop work, enable) needs the
// definition from libvirt; putting one in place (kss pull, clone, resolve, rollback, the
// background work a refused start runs) defines it through libvirt, after the checks a
// definition from the NAS needs. The hook never calls libvirt: it splits the XML it is
// given and compares (lib/sync/start.ts), recording it when it is the generation's.
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { joinDefinition, splitDefinition, type SplitOptions } from '../definition.js';
import { buildRefusal, checkDefinition, guestOf, type HostFacts, type Problem } from '../definition-check.js';
import { attributeOf, childrenNamed, diskRecordOf, domainRecordOf, firstChild, isSyncedDisk, newElement, parseXmlTree, serializeXml, type DiskRecord, type XmlElement } from '../domain-xml.js';
import { pathExists, writeFileAtomic } from '../durable-fs.js';
import { DiskStateError, IntegrityError } from '../errors.js';
import { sha256Of } from '../hash.js';
import type { Logger } from '../log.js';
import type { Generation } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { stateSaver, type SyncDeps } from './deps.js';
import { domainStateDir, readLocalState, type LocalState } from './local-state.js';
import { withDomainLock } from './session.js';

/** What the CLI and the background work ask libvirt about definitions (lib/commands/libvirt-domain.ts). */
export interface LibvirtDefinitions {
  /** The domain's persistent definition (`virsh dumpxml --inactive`). */
  read(domain: string): Promise<string>;
  /** Defines (redefines) a domain. */
  define(xml: string): Promise<void>;
  /** This host as a definition from the NAS is checked against (lib/definition-check.ts). */
  hostFacts(guest: ReturnType<typeof guestOf>): Promise<HostFacts>;
}

function definitionPath(stateDir: string, domain: string, hash: string): string {
  return join(domainStateDir(stateDir, domain), 'definitions', `${hash}.xml`);
}

function hostPartPath(stateDir: string, domain: string): string {
  return join(domainStateDir(stateDir, domain), 'host.xml');
}

/** A portable definition kept here, by its hash. */
export async function readLocalDefinition(stateDir: string, domain: string, hash: string): Promise<string> {
  const text = await readFile(definitionPath(stateDir, domain, hash), 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
    throw new DiskStateError(`the definition ${hash.slice(0, 12)} of ${domain} is not kept on this host (${definitionPath(stateDir, domain, hash)})`, {
      remedy: `it was removed by hand: kss push ${domain} captures the definition anew`,
    });
  });
  if (sha256Of(text) !== hash) throw new IntegrityError(`${definitionPath(stateDir, domain, hash)} does not hash to its name`, { remedy: `remove it; kss push ${domain} captures the definition anew` });
  return text;
}

/** Keeps a portable definition here under its hash; returns the hash. */
async function keepDefinition(stateDir: string, domain: string, text: string): Promise<string> {
  const hash = sha256Of(text);
  const path = definitionPath(stateDir, domain, hash);
  if (!(await pathExists(path))) {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    await writeFileAtomic(path, text, 0o600);
  }
  return hash;
}

async function writeHostPart(stateDir: string, domain: string, host: XmlElement): Promise<void> {
  await mkdir(domainStateDir(stateDir, domain), { recursive: true, mode: 0o700 });
  await writeFileAtomic(hostPartPath(stateDir, domain), serializeXml(host), 0o600);
}

/**
 * A definition split against the portable part it was last made from here (the basis),
 * or against `basisText` when given.
 */
export async function splitHere(stateDir: string, state: LocalState, xml: string, options: SplitOptions, basisText?: string) {
  basisText ??= state.definition === undefined ? undefined : await readLocalDefinition(stateDir, state.domain, state.definition).catch(() => undefined);
  const basis = basisText === undefined ? undefined : await parseXmlTree(basisText);
  const { portable, host } = splitDefinition(await parseXmlTree(xml), basis, options);
  const text = serializeXml(portable);
  return { xml, portable, text, hash: sha256Of(text), host };
}

/**
 * Captures libvirt's definition here (`xml`): keeps its portable part and this host's
 * own part, and records the portable part's hash in `state.definition` (not saved: the
 * caller's seal saves it). Returns the hash, and whether it changed here since it was
 * last captured or put in place.
 */
export async function captureDefinition(stateDir: string, state: LocalState, xml: string, options: SplitOptions): Promise<{ hash: string; changedHere: boolean }> {
  const { text, host } = await splitHere(stateDir, state, xml, options);
  const hash = await keepDefinition(stateDir, state.domain, text);
  await writeHostPart(stateDir, state.domain, host);
  const changedHere = hash !== state.definition;
  state.definition = hash;
  return { hash, changedHere };
}

interface ApplyDeps {
  stateDir: string;
  log: Logger;
  libvirt: LibvirtDefinitions;
  options: SplitOptions;
  now?: () => Date;
}

/** What putting a generation's definition in place here comes to (planDefinition). */
interface DefinitionPlan {
  /** The portable part, verified; and this host's own part to record with it. */
  portableText: string;
  host: XmlElement;
  /** The definition to define; undefined when libvirt's is made from it already. */
  define: string | undefined;
}

/**
 * Plans putting `portableText` (the generation's definition, verified) in place here:
 * libvirt's definition now, unless it is made from it already, becomes it joined with
 * this host's own part, checked as `kss clone` checks a definition from the NAS. A change
 * made here and never captured is kept aside. Asks libvirt (reads only); changes nothing else.
 */
async function planDefinition(state: LocalState, wanted: string, portableText: string, deps: ApplyDeps): Promise<DefinitionPlan> {
  const { stateDir, log, libvirt } = deps;
  const domain = state.domain;
  const currentXml = await libvirt.read(domain);
  // Made from it already (a define whose record was cut off, say): judged against its own text.
  const asWanted = await splitHere(stateDir, state, currentXml, deps.options, portableText);
  if (asWanted.hash === wanted) return { portableText, host: asWanted.host, define: undefined };
  const current = await splitHere(stateDir, state, currentXml, deps.options);
  if (current.hash !== state.definition) {
    // Changed here and never pushed (virsh edit while shut off), or never compared: the NAS's wins, this one is kept.
    const aside = join(domainStateDir(stateDir, domain), `definition-before-${(deps.now?.() ?? new Date()).toISOString().replaceAll(/[:.]/gu, '-')}.xml`);
    await writeFileAtomic(aside, currentXml, 0o600);
    log.warn('the definition here differs from what this host last pushed or put in place; the newer one from the NAS replaces it, and it is kept aside', { file: aside });
  }
  const portable = await parseXmlTree(portableText);
  const currentTree = await parseXmlTree(currentXml);
  const ownDisks = childrenNamed(firstChild(currentTree, 'devices'), 'disk').map(diskRecordOf).filter(isSyncedDisk);
  const newDiskDir = ownDisks[0]?.path === undefined ? undefined : dirname(ownDisks[0].path);
  const joined = joinDefinition(portable, current.host, { newDiskDir });
  await requireSafe(domain, portable, current.host, joined, ownDisks, libvirt, newDiskDir);
  return { portableText, host: current.host, define: serializeXml(joined) };
}

/**
 * Records that libvirt's definition here is made from `portableText` and this host's
 * own part `host` (kept, and named in `state.definition`; the caller saves the state).
 */
export async function recordDefinition(stateDir: string, state: LocalState, portableText: string, host: XmlElement): Promise<void> {
  state.definition = await keepDefinition(stateDir, state.domain, portableText);
  state.definitionRefused = undefined;
  await writeHostPart(stateDir, state.domain, host);
}

/**
 * Checks what the NAS contributes to a definition defined here. Its portable part must
 * be one as a host writes it (lib/definition.ts: every per-host item neutral, managed),
 * and pass the checks of `kss clone` with this host's UUID, emulator and disk paths
 * (this host's passthrough and network sources are its own, and not checked); disks may
 * stay in the directories this domain's disks are in here. This domain's own disk files
 * stay its synced disks, on the same targets; a disk new here gets no existing file.
 */
async function requireSafe(domain: string, portable: XmlElement, host: XmlElement, joined: XmlElement, ownDisks: DiskRecord[], libvirt: LibvirtDefinitions, newDiskDir: string | undefined): Promise<void> {
  const refuse = (problems: Problem[]) => {
    if (problems.length > 0) throw buildRefusal(domain, problems, '; the definition here was not changed');
  };
  const problems: Problem[] = [];
  const unsafe = (element: string, message: string) => problems.push({ element, message, kind: 'unsafe' });
  const name = firstChild(portable, 'name')?.text;
  // Its UUID is this host's own (lib/definition.ts): the name says which domain it is.
  if (name !== domain) unsafe('<name>', `is ${JSON.stringify(name)}, not ${domain}`);
  if (serializeXml(splitDefinition(portable, portable, { cpuPerHost: false }).portable) !== serializeXml(portable)) {
    unsafe('<domain>', "is not a portable definition as kvm-snapshot-sync writes one: it names something of a host's own (an emulator, a device passed through, a network connection or a listen address)");
  }
  for (const element of childrenNamed(firstChild(portable, 'devices'), 'interface')) {
    if (attributeOf(element, 'type') !== 'network') unsafe(`<interface type='${attributeOf(element, 'type') ?? ''}'>`, 'connects the guest to something other than a libvirt network');
  }
  if (!domainRecordOf(joined).managed) unsafe('<metadata>', 'lacks the kvm-snapshot-sync element: the domain would no longer be managed here');
  const own = new Map(ownDisks.map((d) => [posix.normalize(d.path as string), d.target]));
  const seen = new Set<string>();
  const joinedDisks = childrenNamed(firstChild(joined, 'devices'), 'disk').map(diskRecordOf);
  for (const disk of joinedDisks) {
    if (disk.path === undefined) continue;
    const path = posix.normalize(disk.path);
    if (seen.has(path)) unsafe(`<disk> ${disk.target}`, `${disk.path} is the file of another disk of it too`);
    seen.add(path);
    const target = own.get(path);
    if (target !== undefined && (!isSyncedDisk(disk) || disk.format !== 'qcow2' || target !== disk.target)) {
      unsafe(`<disk> ${disk.target}`, `${disk.path} is this host's synced disk ${target}: it stays a writable qcow2 disk ${target}`);
    } else if (target === undefined && isSyncedDisk(disk) && (await pathExists(disk.path))) {
      unsafe(`<disk> ${disk.target}`, `${disk.path} exists already: a disk new here is never put on a file there is`);
    }
  }
  refuse(problems);
  const facts = await libvirt.hostFacts(guestOf(portable));
  const checkedHost = newElement('host', {}, [...childrenNamed(host, 'uuid'), newElement('emulator', {}, [], facts.emulator), ...childrenNamed(host, 'disk')]);
  const checked = joinDefinition(portable, checkedHost, { newDiskDir });
  const xml = serializeXml(checked);
  const root = await parseXmlTree(xml);
  const disks = Object.fromEntries(joinedDisks.filter(isSyncedDisk).map((d) => [d.target, d.path as string]));
  const ownDirs = ownDisks.map((d) => dirname(d.path as string));
  const others = { ...facts, domains: facts.domains.filter((d) => d.name !== domain), poolDirs: [...facts.poolDirs, ...ownDirs] };
  refuse(checkDefinition(xml, root, others, { name: domain, dir: undefined, disks }));
}

/** This host's own part of a definition, as `kss definition` shows it: each item's name and what it holds. */
export function describeHostPart(host: XmlElement | undefined): Array<{ element: string; value: string }> {
  return (host?.children ?? []).flatMap((child) => {
    if (child.qualifiedName === 'passthrough') return child.children.map((c) => ({ element: `<${c.qualifiedName}>`, value: serializeXml(c).trim() }));
    const key = attributeOf(child, 'target') ?? attributeOf(child, 'mac') ?? attributeOf(child, 'type');
    return [{ element: `<${child.qualifiedName}>${key === undefined ? '' : ` ${key}`}`, value: child.text || serializeXml(child).trim() }];
  });
}

/**
 * Puts in place here the definition the next start will run on: the NAS head's, when
 * nothing of this host's is waiting to be pushed (the start then moves onto that head).
 * Looks and records under the domain lock, but asks libvirt outside it: a start that
 * waits for the lock does so inside libvirt, and every virsh call about the domain
 * would wait for it. Returns the generation whose definition is now libvirt's
 * (undefined: none to put in place; `changed`: it was defined now).
 */
export async function putDefinitionInPlace(domain: string, deps: SyncDeps & { libvirt: LibvirtDefinitions }): Promise<{ generation: Generation; changed: boolean } | undefined> {
  const { config, log } = deps;
  const look = await withDomainLock(config.stateDir, domain, log, 60_000, async () => {
    const state = await readLocalState(config.stateDir, domain);
    if (state.pending.length > 0) return undefined; // this host's definition is the newer one
    const repository = deps.openRepository();
    try {
      const manifest = await repository.readManifest(domain);
      const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
      const wanted = head?.definition;
      if (!head || wanted === undefined || wanted === state.definition) return undefined;
      const portableText = (await readLocalDefinition(config.stateDir, domain, wanted).catch(() => undefined)) ?? (await repository.readDefinition(domain, wanted));
      if (portableText === undefined) {
        throw new DiskStateError(`the definition ${wanted.slice(0, 12)} of ${domain} (generation ${head.id.slice(0, 12)} from ${head.host}) is neither here nor on the NAS`, {
          remedy: `kss push ${domain} on ${head.host} puts it there again`,
        });
      }
      return { state, head, wanted, portableText };
    } finally {
      await repository.close();
    }
  });
  if (!look) return undefined;
  const plan = await planDefinition(look.state, look.wanted, look.portableText, applyDeps(deps));
  if (plan.define !== undefined) {
    await deps.libvirt.define(plan.define);
    log.info('put the definition in place', { definition: look.wanted, from: look.head.host });
  }
  await withDomainLock(config.stateDir, domain, log, 60_000, async (lock) => {
    const state = await readLocalState(config.stateDir, domain);
    // Something else changed it meanwhile (a stop's capture): the next start compares again.
    if (state.definition !== look.state.definition || state.pending.length > 0) return;
    await recordDefinition(config.stateDir, state, plan.portableText, plan.host);
    await stateSaver(config.stateDir, lock)(state);
  });
  return { generation: look.head, changed: plan.define !== undefined };
}

/** What planDefinition needs, from a lifecycle run's deps. */
function applyDeps(deps: SyncDeps & { libvirt: LibvirtDefinitions }): ApplyDeps {
  return { stateDir: deps.config.stateDir, log: deps.log, libvirt: deps.libvirt, options: deps.config, now: deps.now };
}
