// What `kss clone` (and a host putting a newer definition in place: lib/sync/definitions.ts)
// accepts from the NAS as a domain definition. Anything that can write to the NAS can write
// the definitions there, and libvirt (root) acts on every path and device in it: it relabels the files it names for QEMU, opens devices, runs scripts and starts
// the emulator. So before anything is pulled or created, the definition is checked here
// against facts about this host, and refused with every problem found. Pure: the facts
// are gathered by lib/commands/libvirt-domain.ts, the refusal thrown by the command.
//
// The checks are of the definition as it will be defined (after --dir and the emulator
// are put in), element by element, over every element libvirt could read: a rule for
// each element that can reach outside the guest, and a last one that refuses any other
// value naming a host path, so that a device type not thought of here is refused rather
// than passed.
import { basename, dirname, extname, isAbsolute, join, posix } from 'node:path';
import { attributeOf, childrenNamed, diskRecordOf, firstChild, isSyncedDisk, XMLNS_URI, type DiskRecord, type XmlElement } from './domain-xml.js';
import { IntegrityError, UsageError, type KssError } from './errors.js';
import { formatBytes } from './progress.js';

/** libvirt's namespace for QEMU pass-through (<qemu:commandline>, <qemu:override>, …). */
export const QEMU_NAMESPACE_URI = 'http://libvirt.org/schemas/domain/qemu/1.0';

/** What a definition is checked against: this host as libvirt sees it. */
export interface HostFacts {
  /** Every domain libvirt knows here, defined or transient, with its disks' source files. */
  domains: ReadonlyArray<{ name: string; uuid: string | undefined; disks: readonly string[] }>;
  /** Target directories of this host's storage pools whose volumes are files (dir, fs, netfs). */
  poolDirs: readonly string[];
  /** This host's emulator for the definition's type, arch and machine (`virsh domcapabilities`). */
  emulator: string;
  /** The firmware files this host offers for it (`virsh domcapabilities`, <os><loader><value>). */
  loaders: readonly string[];
  /** Where libvirt keeps each domain's UEFI variables, `<name>_VARS.fd`. */
  nvramDir: string;
}

/** What was asked for. */
export interface CloneRequest {
  /** The domain named on the command line. */
  name: string;
  /** `--dir`, when given (absolute). */
  dir: string | undefined;
  /** Where the synced disks go: guest device → path (planDiskPaths). */
  disks: Readonly<Record<string, string>>;
}

/** One reason to refuse a definition. */
export interface Problem {
  /** The element at fault, as `virsh dumpxml` shows it: `<disk> vda`, `<qemu:commandline>`. */
  element: string;
  /** What is wrong, and what it would do on this host. */
  message: string;
  /**
   * `placement`: a disk outside this host's storage pools (settled here: --dir, a pool);
   * `in-use`: a domain here has that name or UUID already; `unsafe`: what a definition
   * from the NAS may never do here (settled on the host it came from, unless someone else
   * wrote the NAS).
   */
  kind: 'placement' | 'in-use' | 'unsafe';
}

/** Chardev types that connect the guest to nothing of the host's but a pty, SPICE or the void. */
const HARMLESS_CHARDEVS = new Set(['pty', 'vc', 'null', 'spicevmc', 'spiceport', 'qemu-vdagent']);
/** Entropy sources a <rng> may read (libvirt's own list). */
const RNG_DEVICES = new Set(['/dev/urandom', '/dev/random', '/dev/hwrng']);
/** Free text and other tools' data: never read as configuration by libvirt. */
const FREE_TEXT = new Set(['description', 'title', 'launchSecurity']);

/**
 * Checks a domain definition from the NAS, as it will be defined here (`xml` and its parse
 * `root`), against this host. Returns every problem found; none means it may be defined.
 */
export function checkDefinition(xml: string, root: XmlElement, host: HostFacts, request: CloneRequest): Problem[] {
  const problems: Problem[] = [];
  const refuse = (element: string, message: string, kind: Problem['kind'] = 'unsafe') => problems.push({ element, message, kind });

  // libvirt never writes these; a DTD can define entities and attribute defaults that
  // libvirt's parser and ours could read differently.
  if (/<!DOCTYPE|<!ENTITY/iu.test(xml)) refuse('<!DOCTYPE>', 'a document type declaration, which libvirt never writes');
  const encoding = /^\s*<\?xml[^>]*\bencoding=(['"])(.*?)\1/u.exec(xml)?.[2];
  if (encoding !== undefined && !/^utf-8$/iu.test(encoding)) refuse('<?xml?>', `encoding ${encoding}: libvirt would read other characters than were checked`);

  if (root.qualifiedName !== 'domain' || root.uri !== '') {
    refuse(`<${root.qualifiedName}>`, 'is not a libvirt <domain> definition');
    return problems;
  }
  const type = attributeOf(root, 'type');
  if (type !== 'kvm' && type !== 'qemu') refuse(`<domain type='${type ?? ''}'>`, 'is not a QEMU/KVM domain');
  for (const single of ['name', 'uuid', 'os', 'devices', 'memory', 'vcpu', 'metadata']) {
    const count = childrenNamed(root, single).length;
    if (count > 1) refuse(`<${single}>`, `appears ${count} times; a definition libvirt wrote has one`);
  }
  if (childrenNamed(firstChild(root, 'devices'), 'emulator').length > 1) refuse('<emulator>', 'appears more than once');

  checkIdentity(root, host, request, refuse);
  checkNamespaces(root, refuse);
  checkDisks(root, host, request, refuse);
  for (const child of root.children) {
    if (child.uri === '' && child.qualifiedName !== 'metadata' && !FREE_TEXT.has(child.qualifiedName)) checkElement(child, [root], host, request, refuse);
  }
  return problems;
}

type Refuse = (element: string, message: string, kind?: Problem['kind']) => void;

function checkIdentity(root: XmlElement, host: HostFacts, request: CloneRequest, refuse: Refuse): void {
  const name = firstChild(root, 'name')?.text;
  if (name !== request.name) {
    refuse('<name>', name === undefined ? `is missing; the definition of ${request.name} must name ${request.name}` : `is ${JSON.stringify(name)}, not ${request.name}: the definition of ${request.name} may define only ${request.name}`);
  } else if (host.domains.some((d) => d.name === name)) {
    refuse('<name>', `${name} is already defined on this host`, 'in-use');
  }
  const uuidText = firstChild(root, 'uuid')?.text;
  if (uuidText === undefined) return;
  const uuid = normalizeUuid(uuidText);
  if (uuid === undefined) {
    refuse('<uuid>', `${JSON.stringify(uuidText)} is not a UUID`);
    return;
  }
  const holder = host.domains.find((d) => d.uuid !== undefined && normalizeUuid(d.uuid) === uuid);
  if (holder) refuse('<uuid>', `${uuidText.trim()} is the UUID of ${holder.name}, defined on this host: defining it would replace ${holder.name}`, 'in-use');
}

/**
 * A UUID as libvirt reads it (hex digits, dashes and spaces anywhere between them, any
 * case), as 32 lower-case hex digits; undefined when libvirt would not take it.
 */
export function normalizeUuid(text: string): string | undefined {
  const digits = text.trim().replace(/[-\s]/gu, '').toLowerCase();
  return /^[0-9a-f]{32}$/u.test(digits) ? digits : undefined;
}

/**
 * QEMU pass-through, anywhere (<metadata> included, declarations too): the qemu namespace
 * hands QEMU arguments, environment, capabilities and device properties of the NAS
 * writer's choosing. Outside <metadata>, libvirt's own elements have no namespace.
 */
function checkNamespaces(root: XmlElement, refuse: Refuse): void {
  let used = false;
  const declarations: string[] = [];
  const visit = (element: XmlElement, inMetadata: boolean): void => {
    if (element.uri === QEMU_NAMESPACE_URI) {
      refuse(`<${element.qualifiedName}>`, 'is QEMU pass-through (the qemu namespace): it runs QEMU with whatever arguments, environment or properties the NAS says');
      used = true;
      return;
    }
    for (const a of element.attributes) {
      if (a.value === QEMU_NAMESPACE_URI || a.uri === QEMU_NAMESPACE_URI) {
        declarations.push(`<${element.qualifiedName} ${a.qualifiedName}>`);
      } else if (!inMetadata && a.uri !== '' && a.uri !== XMLNS_URI) {
        refuse(`<${element.qualifiedName} ${a.qualifiedName}>`, `is in namespace ${a.uri}, which libvirt does not define`);
      }
    }
    if (!inMetadata && element.uri !== '') refuse(`<${element.qualifiedName}>`, `is in namespace ${element.uri}: outside <metadata>, libvirt's elements have none`);
    for (const child of element.children) visit(child, inMetadata || (element === root && child.qualifiedName === 'metadata'));
  };
  visit(root, false);
  if (!used) for (const declaration of declarations) refuse(declaration, 'declares or uses the qemu namespace (QEMU pass-through)');
}

/** The disks: each a file in this host's storage pools (or DIR), none another domain's. */
function checkDisks(root: XmlElement, host: HostFacts, request: CloneRequest, refuse: Refuse): void {
  const disks = allNamed(root, 'disk');
  const targets = new Map<string, number>();
  const synced = new Map<string, string>(); // path → target
  const inUse = new Map(host.domains.flatMap((d) => d.disks.map((path) => [posix.normalize(path), d.name] as const)));
  const allowed = [...host.poolDirs, ...(request.dir === undefined ? [] : [request.dir])];
  for (const element of disks) {
    const disk = diskRecordOf(element);
    const label = `<disk> ${disk.target || '(no target)'}`;
    targets.set(disk.target, (targets.get(disk.target) ?? 0) + 1);
    if (!/^[a-z][a-z0-9]*$/u.test(disk.target)) refuse(label, `target dev ${JSON.stringify(disk.target)} is not a device name (vda, sdb, …)`);
    if (!['disk', 'cdrom', 'floppy'].includes(disk.device)) {
      refuse(`<disk device='${disk.device}'> ${disk.target}`, 'is not a disk, CD-ROM or floppy (a lun passes a host SCSI device through)');
      continue;
    }
    const sources = childrenNamed(element, 'source');
    if (sources.length > 1) refuse(label, 'has more than one <source>');
    const source = sources[0];
    const empty = source === undefined || (source.attributes.length === 0 && source.children.length === 0);
    if (empty) continue; // a drive with no medium
    if (disk.type !== 'file') {
      refuse(`<disk type='${disk.type}'> ${disk.target}`, 'reaches beyond image files (a host device, directory, pool volume, socket or network server)');
      continue;
    }
    if (firstChild(element, 'backingStore')) refuse(`${label} <backingStore>`, "names the image's backing chain: libvirt would open the files it lists instead of the ones the image names");
    for (const inner of ['dataStore', 'reservations']) if (firstChild(source, inner)) refuse(`${label} <source><${inner}>`, 'reaches another host file or socket');
    const path = disk.path;
    if (path === undefined) continue; // the last rule refuses any other path given
    const problem = pathProblem(path);
    if (problem) {
      refuse(label, `${path} ${problem}`);
      continue;
    }
    const normal = posix.normalize(path);
    if (isSyncedDisk(disk)) {
      // kss keeps a synced disk as a qcow2 top; opened as raw, the guest could write a
      // qcow2 header into it (a backing file of its choosing) that kss would follow later.
      if (disk.format !== 'qcow2') refuse(`${label} <driver type='${disk.format ?? ''}'>`, 'a synced disk is a qcow2 top: another format lets the guest write the header kss reads');
      if (request.disks[disk.target] !== path) refuse(label, `${path} is not where the disk was to go (${request.disks[disk.target] ?? 'nowhere'}): the definition changed while it was prepared`);
      const twin = synced.get(normal);
      if (twin !== undefined) refuse(label, `${path} is also the file of ${twin}`);
      synced.set(normal, disk.target);
    }
    const owner = inUse.get(normal);
    if (owner !== undefined) {
      refuse(label, `${path} is a disk of ${owner}, defined on this host`);
      continue;
    }
    const roots = isSyncedDisk(disk) && request.dir !== undefined ? [request.dir] : allowed;
    if (!roots.some((dir) => isInside(normal, dir))) {
      const where = roots.length === 0 ? 'this host has no storage pool of files' : `outside ${request.dir !== undefined && isSyncedDisk(disk) ? '--dir' : "this host's storage pools"} (${roots.join(', ')})`;
      refuse(label, `${path}: ${where}`, 'placement');
    }
  }
  for (const [target, count] of targets) if (count > 1 && target !== '') refuse(`<disk> ${target}`, `target ${target} is used by ${count} disks`);
  const planned = Object.keys(request.disks).filter((target) => ![...synced.values()].includes(target));
  for (const target of planned) refuse(`<disk> ${target}`, 'was to be cloned, but the definition has no such synced disk: the definition changed while it was prepared');
}

/** Why a path from the NAS is refused as such (relative, `.` or `..` in it), or undefined. */
function pathProblem(path: string): string | undefined {
  if (!isAbsolute(path) || path.includes('\0')) return 'is not an absolute path';
  const parts = path.split('/');
  if (parts.some((part) => part === '.' || part === '..')) return "has '.' or '..' in it: the kernel resolves '..' through symbolic links, so no check of the text can tell where it leads";
  if (parts.some((part) => part.endsWith('.layers'))) return "is inside a kvm-snapshot-sync layers directory (*.layers)";
  return undefined;
}

/** Whether `path` (normalized) lies below the directory `dir`. */
function isInside(path: string, dir: string): boolean {
  const root = posix.normalize(`${dir}/`);
  return path.startsWith(root) && path.length > root.length;
}

/** The element rules, for libvirt's own elements (no namespace) outside <metadata>. */
function checkElement(element: XmlElement, ancestors: XmlElement[], host: HostFacts, request: CloneRequest, refuse: Refuse): void {
  const parent = ancestors.at(-1) as XmlElement;
  const name = element.qualifiedName;
  const type = attributeOf(element, 'type');
  const tag = type === undefined ? `<${name}>` : `<${name} type='${type}'>`;
  const accepted = new Set<string>(); // attributes (or '#text') whose paths a rule below has checked
  const whole = (message: string): void => refuse(tag, message); // refuses the element and all it holds

  switch (name) {
    case 'emulator':
      if (element.text !== host.emulator) refuse(`<emulator>${element.text}</emulator>`, `is not this host's emulator (${host.emulator})`);
      accepted.add('#text');
      break;
    case 'loader':
      if (parent.qualifiedName === 'os') {
        if (element.text !== '' && !host.loaders.includes(element.text)) {
          refuse(`<loader>${element.text}</loader>`, `is not firmware this host offers (${host.loaders.join(', ') || 'none; see virsh domcapabilities'})`);
        }
        if (attributeOf(element, 'readonly') === 'no') refuse("<loader readonly='no'>", "would let the guest write this host's firmware file");
        accepted.add('#text');
      }
      break;
    case 'nvram':
      if (parent.qualifiedName === 'os') {
        const own = [`${host.nvramDir}/${request.name}_VARS.fd`, `${host.nvramDir}/${request.name}_VARS.qcow2`];
        if (element.text !== '' && !own.includes(element.text)) refuse(`<nvram>${element.text}</nvram>`, `is not libvirt's own file for ${request.name} (${own[0]})`);
        if (element.children.length > 0 || (type !== undefined && type !== 'file')) refuse('<nvram>', 'keeps the UEFI variables elsewhere than in a file of libvirt\'s');
        const template = attributeOf(element, 'template');
        if (template !== undefined && (pathProblem(template) || !host.loaders.some((loader) => dirname(loader) === dirname(template)))) {
          refuse(`<nvram template='${template}'>`, "is not beside firmware this host offers: libvirt would copy that file into the guest's variables");
        }
        accepted.add('#text').add('template');
      }
      break;
    case 'kernel':
    case 'initrd':
    case 'dtb':
      if (parent.qualifiedName === 'os') return whole(`direct kernel boot: QEMU would read ${element.text || 'a file'} of this host's into the guest`);
      break;
    case 'acpi':
      if (parent.qualifiedName === 'os' && childrenNamed(element, 'table').length > 0) return whole("gives the guest ACPI tables read from this host's files");
      break;
    case 'partition':
      if (parent.qualifiedName === 'resource') {
        const partition = posix.normalize(element.text.trim());
        if (partition !== '/machine' && !partition.startsWith('/machine/')) refuse(`<partition>${element.text}</partition>`, 'is a cgroup outside /machine');
        accepted.add('#text');
      }
      break;
    case 'seclabel':
      if (parent === ancestors[0]) {
        const model = attributeOf(element, 'model');
        const relabel = attributeOf(element, 'relabel');
        if (type === 'none' || model === 'none') return whole("turns off libvirt's confinement of QEMU (sVirt/DAC)");
        if (type !== undefined && type !== 'dynamic') return whole("sets QEMU's security label itself (model dac +0:+0 would run QEMU as root)");
        if (relabel === 'no') return whole('leaves the files QEMU uses unlabelled');
        if (element.children.length > 0) return whole('chooses (parts of) the security label itself');
      } else {
        return whole(`under <${parent.qualifiedName}>: overrides libvirt's confinement for one device or file`);
      }
      break;
    case 'filesystem':
      return whole("shares a directory or file of this host's with the guest");
    case 'hostdev':
      return whole("passes a host device (PCI, USB, SCSI, a block or char device) through to the guest");
    case 'shmem':
      return whole('shares memory with this host and other guests');
    case 'interface':
      if (type === 'hostdev' || type === 'vhostuser' || type === 'vdpa') return whole('passes a host device or socket through to the guest');
      break;
    case 'script':
    case 'downscript':
      return whole('runs a program of this host\'s as root when the guest starts or stops');
    case 'input':
      if (type === 'passthrough' || type === 'evdev') return whole("passes one of this host's input devices (keyboard, mouse) to the guest");
      break;
    case 'audio':
      if (type !== 'none' && type !== 'spice') return whole("gives the guest this host's sound devices (its microphone)");
      break;
    case 'graphics':
      if (type !== 'vnc' && type !== 'spice' && type !== 'egl-headless') return whole("uses this host's display or D-Bus");
      break;
    case 'smartcard': {
      const mode = attributeOf(element, 'mode');
      if (mode !== 'passthrough') return whole("gives the guest this host's smartcard reader or certificates");
      if (!isHarmlessChardev(element)) return whole(chardevMessage);
      break;
    }
    case 'tpm': {
      const backend = attributeOf(firstChild(element, 'backend'), 'type');
      if (backend !== undefined && backend !== 'emulator') return whole("passes this host's TPM, or a socket, to the guest");
      break;
    }
    case 'backend':
      if (parent.qualifiedName === 'rng') {
        const model = attributeOf(element, 'model');
        if (model === 'random') {
          if (element.text !== '' && !RNG_DEVICES.has(element.text)) refuse(`<rng><backend>${element.text}</backend>`, `is not an entropy device (${[...RNG_DEVICES].join(', ')})`);
          accepted.add('#text');
        } else if (model === 'egd' && !isHarmlessChardev(element)) {
          return whole(chardevMessage);
        }
      }
      break;
    case 'serial':
    case 'parallel':
    case 'console':
    case 'channel':
    case 'redirdev':
      if (parent.qualifiedName === 'devices' && !isHarmlessChardev(element)) return whole(chardevMessage);
      break;
    case 'vcpusched':
    case 'iothreadsched':
    case 'emulatorsched': {
      const scheduler = attributeOf(element, 'scheduler');
      if (scheduler === 'fifo' || scheduler === 'rr') return refuse(`<${name} scheduler='${scheduler}'>`, 'real-time scheduling: the guest could starve this host');
      break;
    }
    case 'source':
      if (parent.qualifiedName === 'disk') {
        // checkDisks has checked the file of a file disk, and refused any other disk
        if ((attributeOf(parent, 'type') ?? 'file') !== 'file' || !['disk', 'cdrom', 'floppy'].includes(attributeOf(parent, 'device') ?? 'disk')) return;
        accepted.add('file');
      }
      break;
    default:
      break;
  }

  // The last rule: no other value may name a host path (a file, device, socket, or an
  // address like unix:/path): those are what the rules above check, one by one.
  for (const a of element.attributes) {
    if (a.uri === XMLNS_URI || accepted.has(a.qualifiedName) || !namesPath(a.value)) continue;
    refuse(`<${name} ${a.qualifiedName}='${a.value}'>`, 'names a host path, which a definition from the NAS may not');
  }
  if (!accepted.has('#text') && namesPath(element.text)) refuse(`<${name}>${element.text.trim()}</${name}>`, 'names a host path, which a definition from the NAS may not');
  for (const child of element.children) {
    if (child.uri === '') checkElement(child, [...ancestors, element], host, request, refuse);
  }
}

const chardevMessage = "connects the guest to a file, device, socket or network port of this host's (pty, spicevmc, spiceport, qemu-vdagent, vc, null, and unix channels that libvirt places, are taken)";

/** A character device (serial, console, channel, …) that reaches nothing of the host's. */
function isHarmlessChardev(element: XmlElement): boolean {
  const type = attributeOf(element, 'type');
  if (type === undefined || HARMLESS_CHARDEVS.has(type)) return true;
  // A guest agent channel as libvirt writes it: a socket libvirt puts in its own directory.
  return type === 'unix' && childrenNamed(element, 'source').every((source) => attributeOf(source, 'path') === undefined && attributeOf(source, 'mode') !== 'connect');
}

/** Whether a value looks like a host path, or an address holding one (`unix:/run/x`, `path=/x`). */
function namesPath(value: string): boolean {
  const text = value.trim();
  return text.startsWith('/') || text.includes(':/') || text.includes('=/');
}

function allNamed(element: XmlElement, name: string): XmlElement[] {
  const found: XmlElement[] = [];
  const visit = (node: XmlElement, inMetadata: boolean) => {
    if (!inMetadata && node.qualifiedName === name && node.uri === '') found.push(node);
    for (const child of node.children) visit(child, inMetadata || (node === element && child.qualifiedName === 'metadata'));
  };
  visit(element, false);
  return found;
}

/** The request for a definition from the NAS: the name asked for, --dir, and where its synced disks go. */
export function planClone(nas: XmlElement, asked: { name: string; dir: string | undefined }): CloneRequest {
  const synced = childrenNamed(firstChild(nas, 'devices'), 'disk').map(diskRecordOf).filter(isSyncedDisk);
  return { ...asked, disks: planDiskPaths(synced, asked.dir) };
}

/**
 * Where the synced disks go (guest device → path): at the paths the definition names, or
 * in `dir` under their own file names. Disks whose file names are the same (/a/disk.qcow2
 * and /b/disk.qcow2) get the target in the name instead: DIR/disk-vda.qcow2,
 * DIR/disk-vdb.qcow2.
 */
export function planDiskPaths(disks: readonly DiskRecord[], dir: string | undefined): Record<string, string> {
  if (dir === undefined) return Object.fromEntries(disks.map((d) => [d.target, d.path as string]));
  const names = disks.map((d) => basename(d.path as string));
  return Object.fromEntries(
    disks.map((d, i) => {
      const name = names[i] as string;
      if (names.filter((other) => other === name).length === 1) return [d.target, join(dir, name)];
      const ext = extname(name);
      return [d.target, join(dir, `${name.slice(0, name.length - ext.length)}-${d.target}${ext}`)];
    }),
  );
}

/** What the guest will look like, for the person to read before it is defined. */
export interface DefinitionSummary {
  name: string;
  uuid: string | undefined;
  /** `64.0 MiB`, or as written when the unit is not one of libvirt's usual ones. */
  memory: string | undefined;
  vcpus: number | undefined;
  disks: Array<{ target: string; path: string | undefined; device: string; synced: boolean; readonly: boolean }>;
}

/** The summary of a <domain> element. */
export function summarizeDefinition(root: XmlElement): DefinitionSummary {
  const memory = firstChild(root, 'memory');
  const vcpus = Number.parseInt(firstChild(root, 'vcpu')?.text.trim() ?? '', 10);
  return {
    name: firstChild(root, 'name')?.text ?? '',
    uuid: firstChild(root, 'uuid')?.text.trim(),
    memory: memory === undefined ? undefined : formatMemory(memory.text.trim(), attributeOf(memory, 'unit') ?? 'KiB'),
    vcpus: Number.isFinite(vcpus) ? vcpus : undefined,
    disks: childrenNamed(firstChild(root, 'devices'), 'disk').map((element) => {
      const disk = diskRecordOf(element);
      return { target: disk.target, path: disk.path, device: disk.device, synced: isSyncedDisk(disk), readonly: disk.readonly };
    }),
  };
}

const UNITS: Record<string, number> = { b: 1, bytes: 1, kb: 1e3, k: 1024, kib: 1024, mb: 1e6, m: 2 ** 20, mib: 2 ** 20, gb: 1e9, g: 2 ** 30, gib: 2 ** 30, tb: 1e12, t: 2 ** 40, tib: 2 ** 40 };

/** A libvirt scaled integer (`<memory unit='KiB'>65536</memory>`) in binary units. */
function formatMemory(value: string, unit: string): string {
  const scale = UNITS[unit.toLowerCase()];
  return scale === undefined || !/^\d+$/u.test(value) ? `${value} ${unit}` : formatBytes(Number(value) * scale);
}

/** The lines `kss clone` prints before it defines: name, UUID, memory, vCPUs, each disk, the emulator. */
export function formatDefinition(summary: DefinitionSummary, emulator: { here: string; nas: string | undefined }): string {
  const memory = summary.memory ?? 'no <memory>';
  const vcpus = summary.vcpus === undefined ? '1 vCPU' : `${summary.vcpus} vCPU${summary.vcpus === 1 ? '' : 's'}`;
  const lines = [`${summary.name}: the definition from the NAS: uuid ${summary.uuid ?? '(libvirt chooses one)'}, ${memory}, ${vcpus}`];
  for (const disk of summary.disks) {
    const notes = [disk.device === 'disk' ? '' : disk.device, disk.readonly ? 'read-only' : '', disk.path !== undefined && !disk.synced ? 'not synced' : ''].filter(Boolean);
    lines.push(`  ${disk.target} → ${disk.path ?? '(empty)'}${notes.length > 0 ? ` (${notes.join(', ')})` : ''}`);
  }
  const replaced = emulator.nas !== undefined && emulator.nas !== emulator.here ? ` (this host's; the NAS named ${emulator.nas})` : '';
  lines.push(`  emulator ${emulator.here}${replaced}`);
  return `${lines.join('\n')}\n`;
}

/**
 * The error that refuses a definition: exit 6 when anything in it is unsafe (settled where
 * the definition came from, or the NAS was written by someone else), else exit 2 (settled
 * on this host: --dir, a storage pool, the domain holding the UUID).
 */
export function buildRefusal(domain: string, problems: readonly Problem[], when: string): KssError {
  const message = [`the definition of ${domain} on the NAS is refused${when}:`, ...problems.map((p) => `  ${p.element}: ${p.message}`)].join('\n');
  const remedies: string[] = [];
  if (problems.some((p) => p.kind === 'unsafe')) {
    remedies.push(
      `if it is your own VM, change that where it runs (virsh edit ${domain}, then kss push ${domain}) and run this again, adding what this host needs by hand afterwards (virsh edit here: it stays this host's own where it can); if you did not put it there, someone else can write to the NAS: look at domains/${domain}/ there (manifest.json, definitions/)`,
    );
  }
  if (problems.some((p) => p.kind === 'placement')) {
    remedies.push(`kss clone ${domain} --dir DIR puts its disks in DIR; or make their directory a storage pool here (virsh pool-define-as NAME dir --target DIRECTORY)`);
  }
  if (problems.some((p) => p.kind === 'in-use')) {
    remedies.push(`a domain here has that name or UUID (virsh list --all --uuid): clone ${domain} on a host without it, or undefine that domain first`);
  }
  const options = { remedy: remedies.join('; ') };
  return problems.some((p) => p.kind === 'unsafe') ? new IntegrityError(message, options) : new UsageError(message, options);
}

/** The target directory of a storage pool whose volumes are files (dir, fs, netfs), from `virsh pool-dumpxml`. */
export function poolDirOf(pool: XmlElement): string | undefined {
  if (pool.qualifiedName !== 'pool' || !['dir', 'fs', 'netfs'].includes(attributeOf(pool, 'type') ?? '')) return undefined;
  const path = firstChild(firstChild(pool, 'target'), 'path')?.text.trim();
  return path && isAbsolute(path) ? posix.normalize(path).replace(/(.)\/$/u, '$1') : undefined;
}

/** The emulator and firmware files of `virsh domcapabilities`. */
export function readDomainCapabilities(caps: XmlElement): { emulator: string | undefined; loaders: string[] } {
  const loader = firstChild(firstChild(caps, 'os'), 'loader');
  return {
    emulator: firstChild(caps, 'path')?.text.trim() || undefined,
    loaders: childrenNamed(loader, 'value').map((v) => v.text.trim()).filter(Boolean),
  };
}

/** What `virsh domcapabilities` is asked about: the definition's domain type, arch and machine. */
export function guestOf(root: XmlElement): { type: string | undefined; arch: string | undefined; machine: string | undefined } {
  const osType = firstChild(firstChild(root, 'os'), 'type');
  return { type: attributeOf(root, 'type'), arch: attributeOf(osType, 'arch'), machine: attributeOf(osType, 'machine') };
}

/** The text of the definition's <emulator>, when it has one. */
export function emulatorOf(root: XmlElement): string | undefined {
  return firstChild(firstChild(root, 'devices'), 'emulator')?.text;
}
