// A domain's definition in two parts: the portable part, which travels with every
// generation (memory, vCPUs, disks, devices), and this host's own part, which never
// leaves it (<stateDir>/domains/<domain>/host.xml). Pure: trees in, trees out
// (lib/domain-xml.ts parses and writes them).
//
// This host's own part, each item found by what identifies it in both parts:
//   <uuid>                                the domain's identity in this host's libvirt
//                                         (kss clone gives the same; a domain defined by
//                                         hand on two hosts keeps each its own)
//   <devices><emulator>                   the host's QEMU binary
//   <devices><hostdev>, <interface type='hostdev'>
//                                         devices passed through (a GPU, a USB device)
//   <interface type='network|bridge|direct|user'> by <mac>: its type, <source> and
//                                         <virtualport> (a bridge on the desktop, NAT or
//                                         user networking on the laptop)
//   <graphics> by type: its listen address (`listen`, <listen>)
//   <disk> by target: its source file     (paths chosen with kss clone --dir)
//   <cpu>                                 only with the configuration's cpuPerHost
//
// The portable part has each of these neutral: no emulator (libvirt puts in this
// host's default), nothing passed through, interfaces on libvirt's `default` network,
// graphics on libvirt's default listen address; the UUID, a disk's path, and with
// cpuPerHost the <cpu>, as the portable part had them before (`basis`: so that a host never
// changes the portable part by having its own), or as the host that adds them has them.
import { basename, posix } from 'node:path';
import { attributeOf, childrenNamed, copyElement, firstChild, newElement, removeAttribute, setAttribute, setDiskPaths, setEmulator, type XmlElement } from './domain-xml.js';

export interface SplitOptions {
  /** The <cpu> element is this host's own (configuration: cpuPerHost). */
  cpuPerHost: boolean;
}

/** The interface types that connect to a network, bridge or device of the host's, or to its own stack (user). */
const HOST_NETWORKS = new Set(['network', 'bridge', 'direct', 'user']);
/** A file name a disk new to a host may get in its directory (nothing like `.` or `..`). */
const PLAIN_FILE_NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/u;
/** The children of an interface that say where it connects on the host. */
const CONNECTION = ['source', 'virtualport'];

/**
 * Splits a definition as libvirt prints it (`virsh dumpxml --inactive`) into its portable
 * part and this host's own part. `basis`: the portable part this host's definition was
 * last made or put in place from (undefined: none yet).
 */
export function splitDefinition(domain: XmlElement, basis: XmlElement | undefined, options: SplitOptions): { portable: XmlElement; host: XmlElement } {
  const portable = copyElement(domain);
  removeAttribute(portable, 'id'); // a running domain's number (the XML a start's hook gets)
  const host = newElement('host');
  const devices = firstChild(portable, 'devices');

  const uuid = firstChild(portable, 'uuid');
  if (uuid) {
    host.children.push(newElement('uuid', {}, [], uuid.text));
    const before = basis && firstChild(basis, 'uuid');
    if (before) uuid.text = before.text;
  }

  const emulator = firstChild(devices, 'emulator');
  if (emulator) host.children.push(newElement('emulator', {}, [], emulator.text));
  if (options.cpuPerHost) {
    const cpu = firstChild(portable, 'cpu');
    if (cpu) host.children.push(copyElement(cpu));
    const basisCpu = basis && firstChild(basis, 'cpu');
    if (basis) replaceChild(portable, 'cpu', basisCpu && copyElement(basisCpu));
  }
  const basisPaths = new Map(basis ? diskSources(basis) : []);
  const paths: Record<string, string> = {};
  for (const [target, file] of diskSources(portable)) {
    host.children.push(newElement('disk', { target, file }));
    const before = basisPaths.get(target);
    if (before !== undefined) paths[target] = before;
  }
  setDiskPaths(portable, paths);

  for (const element of childrenNamed(devices, 'interface')) {
    const type = attributeOf(element, 'type') ?? '';
    const mac = attributeOf(firstChild(element, 'mac'), 'address');
    if (!HOST_NETWORKS.has(type) || mac === undefined) continue;
    host.children.push(newElement('interface', { mac, type }, element.children.filter((c) => CONNECTION.includes(c.qualifiedName)).map(copyElement)));
    connect(element, 'network', [newElement('source', { network: 'default' })]);
  }
  const seen = new Set<string>();
  for (const element of childrenNamed(devices, 'graphics')) {
    const type = attributeOf(element, 'type') ?? '';
    if (seen.has(type)) continue; // found by type: the first of each is the one that travels
    seen.add(type);
    const listen = attributeOf(element, 'listen');
    host.children.push(newElement('graphics', { type, ...(listen === undefined ? {} : { listen }) }, childrenNamed(element, 'listen').map(copyElement)));
    removeAttribute(element, 'listen');
    element.children = element.children.filter((c) => c.qualifiedName !== 'listen');
  }
  if (devices) {
    const passedThrough = devices.children.filter(isPassthrough);
    if (passedThrough.length > 0) host.children.push(newElement('passthrough', {}, passedThrough.map(copyElement)));
    devices.children = devices.children.filter((c) => !isPassthrough(c) && c.qualifiedName !== 'emulator');
  }
  return { portable, host };
}

/**
 * The definition to define on this host: the portable part with this host's own part
 * put in. A disk this host has no path for yet (added on another host) goes into
 * `newDiskDir` under its file name, when given and a plain one (else it keeps its path).
 */
export function joinDefinition(portable: XmlElement, host: XmlElement | undefined, { newDiskDir }: { newDiskDir?: string } = {}): XmlElement {
  const domain = copyElement(portable);
  let devices = firstChild(domain, 'devices');
  if (!devices) domain.children.push((devices = newElement('devices')));
  const own = (name: string) => childrenNamed(host, name);

  const uuid = own('uuid')[0];
  const uuidHere = firstChild(domain, 'uuid');
  if (uuid && uuidHere) uuidHere.text = uuid.text;
  const emulator = own('emulator')[0];
  if (emulator) setEmulator(domain, emulator.text);
  const cpu = own('cpu')[0];
  if (cpu) replaceChild(domain, 'cpu', copyElement(cpu));

  const hostPaths = new Map(own('disk').map((d) => [attributeOf(d, 'target') ?? '', attributeOf(d, 'file') ?? ''] as const));
  const paths: Record<string, string> = {};
  for (const [target, file] of diskSources(domain)) {
    const here = hostPaths.get(target);
    if (here) paths[target] = here;
    else if (newDiskDir !== undefined && PLAIN_FILE_NAME.test(basename(file)) && !basename(file).endsWith('.layers')) paths[target] = posix.join(newDiskDir, basename(file));
  }
  setDiskPaths(domain, paths);

  const connections = new Map(own('interface').map((i) => [attributeOf(i, 'mac') ?? '', i] as const));
  for (const element of childrenNamed(devices, 'interface')) {
    const mine = connections.get(attributeOf(firstChild(element, 'mac'), 'address') ?? '');
    if (mine && HOST_NETWORKS.has(attributeOf(element, 'type') ?? '')) connect(element, attributeOf(mine, 'type') ?? 'network', mine.children.map(copyElement));
  }
  const listens = new Map(own('graphics').map((g) => [attributeOf(g, 'type') ?? '', g] as const));
  for (const element of childrenNamed(devices, 'graphics')) {
    const mine = listens.get(attributeOf(element, 'type') ?? '');
    if (!mine) continue;
    listens.delete(attributeOf(element, 'type') ?? ''); // the first of its type only, as split took it
    const listen = attributeOf(mine, 'listen');
    if (listen === undefined) removeAttribute(element, 'listen');
    else setAttribute(element, 'listen', listen);
    element.children = [...mine.children.map(copyElement), ...element.children.filter((c) => c.qualifiedName !== 'listen')];
  }
  devices.children.push(...own('passthrough').flatMap((p) => p.children.map(copyElement)));
  return domain;
}

/** A device passed through from the host: it exists on that host only. */
function isPassthrough(element: XmlElement): boolean {
  return element.qualifiedName === 'hostdev' || (element.qualifiedName === 'interface' && attributeOf(element, 'type') === 'hostdev');
}

/** Each <disk> with a source file: target → path. */
function diskSources(domain: XmlElement): Array<[string, string]> {
  return childrenNamed(firstChild(domain, 'devices'), 'disk').flatMap((disk) => {
    const target = attributeOf(firstChild(disk, 'target'), 'dev');
    const file = attributeOf(firstChild(disk, 'source'), 'file');
    return target === undefined || file === undefined ? [] : [[target, file] as [string, string]];
  });
}

/**
 * An interface connected as `type` through `connection` (its <source>, <virtualport>),
 * put where its old <source> was (after <mac> when it had none), as libvirt orders them.
 */
function connect(element: XmlElement, type: string, connection: XmlElement[]): void {
  setAttribute(element, 'type', type);
  const at = element.children.findIndex((c) => CONNECTION.includes(c.qualifiedName));
  const kept = element.children.filter((c) => !CONNECTION.includes(c.qualifiedName));
  const index = at >= 0 ? at : kept.findIndex((c) => c.qualifiedName === 'mac') + 1;
  kept.splice(index, 0, ...connection);
  element.children = kept;
}

/** Replaces the first child of that name by `replacement` (removes it when undefined; adds it at the end when there was none). */
function replaceChild(parent: XmlElement, name: string, replacement: XmlElement | undefined): void {
  const index = parent.children.findIndex((c) => c.qualifiedName === name);
  if (index >= 0) parent.children.splice(index, 1, ...(replacement ? [replacement] : []));
  else if (replacement) parent.children.push(replacement);
}
