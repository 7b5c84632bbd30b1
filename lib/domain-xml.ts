// Parses libvirt domain XML into a tree and a typed record, edits the tree and writes it
// back as XML (serializeXml). The only module that imports xml2js, and the one owner of
// libvirt XML: nothing edits it as text.
import { parseStringPromise } from 'xml2js';
import { DiskStateError } from './errors.js';
import { METADATA_ELEMENT, NAMESPACE_URI } from './namespace.js';

/** One <disk> of the domain, as far as syncing cares. */
export interface DiskRecord {
  /** Guest device name (`vda`): stable per domain, so it identifies the disk on the NAS. */
  target: string;
  /** `file`, `block`, `network`, … — only `file` disks can be synced. */
  type: string;
  /** `disk`, `cdrom`, `floppy`, `lun`. */
  device: string;
  /** The image path (`<source file=…>`), when the disk has one. */
  path: string | undefined;
  /** Driver format (`qcow2`, `raw`), when given. */
  format: string | undefined;
  readonly: boolean;
  shareable: boolean;
}

export interface DomainRecord {
  name: string;
  uuid: string | undefined;
  /** True when <metadata> holds our element in our namespace. */
  managed: boolean;
  disks: DiskRecord[];
  /** The UEFI variable store (`<os><nvram>`, its text or its `<source file>`), when the domain has one. */
  nvram: string | undefined;
  /**
   * An emulated TPM whose state libvirt keeps in its own directory
   * (`<tpm><backend type='emulator'>` without a `<source>` of its own).
   */
  tpmEmulator: boolean;
  /** The libvirt secret an emulated TPM's state is encrypted with (`<backend><encryption secret=…>`). */
  tpmSecret: string | undefined;
}

/**
 * An element of an XML document as parsed, for code that looks at every element (the
 * checks of a definition from the NAS) and for the records below.
 */
export interface XmlElement {
  /** The name as written, prefix included (`disk`, `qemu:commandline`). */
  qualifiedName: string;
  /** The local name (`commandline` for `<qemu:commandline>`). */
  name: string;
  /** The element's namespace URI: '' for libvirt's own elements. */
  uri: string;
  /** In document order; namespace declarations (`xmlns`, `xmlns:p`) included, with uri XMLNS_URI. */
  attributes: XmlAttribute[];
  children: XmlElement[];
  /** The element's own character data (CDATA included), as written; '' when it has none. */
  text: string;
}

export interface XmlAttribute {
  /** The name as written, prefix included. */
  qualifiedName: string;
  /** The attribute's namespace URI: '' for an unprefixed one. */
  uri: string;
  value: string;
}

/** The namespace of namespace declarations (`xmlns:p="…"` attributes). */
export const XMLNS_URI = 'http://www.w3.org/2000/xmlns/';

// xml2js with `xmlns: true` and `explicitChildren`: each element is {#name, $ns: {local,
// uri}, $: {name: {value, uri, …}}, _: text, $$: [children in document order]}.
interface XmlNode {
  '#name'?: string;
  $?: Record<string, { value: string; uri: string }>;
  $ns?: { local: string; uri: string };
  _?: string;
  $$?: Array<XmlNode | string>;
}

/** Parses any XML document (libvirt's domain, pool or capabilities XML) into its root element. */
export async function parseXmlTree(xml: string): Promise<XmlElement> {
  let doc: Record<string, XmlNode | string> | null;
  try {
    doc = (await parseStringPromise(xml, { xmlns: true, explicitChildren: true, preserveChildrenOrder: true })) as Record<string, XmlNode | string> | null;
  } catch (error) {
    throw new DiskStateError(`the XML cannot be parsed: ${(error as Error).message}`, { cause: error });
  }
  const [name, root] = Object.entries(doc ?? {})[0] ?? [];
  if (name === undefined || root === undefined) throw new DiskStateError('the XML has no root element');
  return toElement(name, root);
}

function toElement(qualifiedName: string, node: XmlNode | string): XmlElement {
  if (typeof node === 'string') {
    const local = qualifiedName.slice(qualifiedName.indexOf(':') + 1);
    return { qualifiedName, name: local, uri: '', attributes: [], children: [], text: node };
  }
  return {
    qualifiedName,
    name: node.$ns?.local ?? qualifiedName,
    uri: node.$ns?.uri ?? '',
    attributes: Object.entries(node.$ ?? {}).map(([attrName, a]) => ({ qualifiedName: attrName, uri: a.uri, value: a.value })),
    children: (node.$$ ?? []).filter((child): child is XmlNode => typeof child !== 'string').map((child) => toElement(child['#name'] ?? '', child)),
    text: node._ ?? '',
  };
}

/** The children of an element with that name as written (libvirt's own elements have no prefix). */
export function childrenNamed(element: XmlElement | undefined, qualifiedName: string): XmlElement[] {
  return element?.children.filter((child) => child.qualifiedName === qualifiedName) ?? [];
}

/** The first child of that name, as libvirt reads most elements. */
export function firstChild(element: XmlElement | undefined, qualifiedName: string): XmlElement | undefined {
  return childrenNamed(element, qualifiedName)[0];
}

/** An attribute's value by its name as written. */
export function attributeOf(element: XmlElement | undefined, qualifiedName: string): string | undefined {
  return element?.attributes.find((a) => a.qualifiedName === qualifiedName)?.value;
}

/** Parses domain XML (as libvirt passes it to hooks or `virsh dumpxml` prints it). */
export async function parseDomainXml(xml: string): Promise<DomainRecord> {
  return domainRecordOf(await parseXmlTree(xml));
}

/** The record of a parsed <domain> element. */
export function domainRecordOf(domain: XmlElement): DomainRecord {
  const devices = firstChild(domain, 'devices');
  const tpms = childrenNamed(devices, 'tpm');
  if (domain.qualifiedName !== 'domain') throw new DiskStateError('the XML is not a libvirt <domain> definition');
  const name = firstChild(domain, 'name')?.text.trim();
  if (!name) throw new DiskStateError('the domain XML has no <name>');
  return {
    name,
    uuid: firstChild(domain, 'uuid')?.text.trim(),
    managed: isManaged(firstChild(domain, 'metadata')),
    disks: childrenNamed(devices, 'disk').map(diskRecordOf),
    nvram: nvramOf(firstChild(firstChild(domain, 'os'), 'nvram')),
    tpmEmulator: tpms.some((tpm) => {
      const backend = firstChild(tpm, 'backend');
      return attributeOf(backend, 'type') === 'emulator' && firstChild(backend, 'source') === undefined;
    }),
    tpmSecret: tpms
      .map((tpm) => attributeOf(firstChild(firstChild(tpm, 'backend'), 'encryption'), 'secret'))
      .find((secret) => secret !== undefined),
  };
}

function nvramOf(nvram: XmlElement | undefined): string | undefined {
  if (!nvram) return undefined;
  const source = firstChild(nvram, 'source');
  const path = source ? attributeOf(source, 'file') : nvram.text.trim();
  return path === undefined || path === '' ? undefined : path;
}

function isManaged(metadata: XmlElement | undefined): boolean {
  return metadata?.children.some((node) => node.uri === NAMESPACE_URI && node.name === METADATA_ELEMENT) ?? false;
}

/** The record of one <disk> element. */
export function diskRecordOf(disk: XmlElement): DiskRecord {
  const source = firstChild(disk, 'source');
  return {
    target: attributeOf(firstChild(disk, 'target'), 'dev') ?? '',
    type: attributeOf(disk, 'type') ?? 'file',
    device: attributeOf(disk, 'device') ?? 'disk',
    path: attributeOf(source, 'file'),
    format: attributeOf(firstChild(disk, 'driver'), 'type'),
    readonly: firstChild(disk, 'readonly') !== undefined,
    shareable: firstChild(disk, 'shareable') !== undefined,
  };
}

/** Whether a disk is synced: a writable file-backed disk (not a CD-ROM, not shared). */
export function isSyncedDisk(disk: DiskRecord): boolean {
  return disk.device === 'disk' && disk.type === 'file' && disk.path !== undefined && !disk.readonly && !disk.shareable;
}

/** The disks that are synced: writable file-backed disks (not CD-ROMs, not shared). */
export function syncedDisks(domain: DomainRecord): DiskRecord[] {
  return domain.disks.filter(isSyncedDisk);
}

/** Serializes an element tree as XML, indented as libvirt writes it; what parseXmlTree reads back as the same tree. */
export function serializeXml(root: XmlElement): string {
  const lines: string[] = [];
  const write = (element: XmlElement, indent: string): void => {
    const open = `${indent}<${element.qualifiedName}${element.attributes.map((a) => ` ${a.qualifiedName}='${escapeXml(a.value)}'`).join('')}`;
    if (element.children.length === 0) {
      lines.push(element.text === '' ? `${open}/>` : `${open}>${escapeXml(element.text)}</${element.qualifiedName}>`);
      return;
    }
    lines.push(`${open}>${escapeXml(element.text)}`);
    for (const child of element.children) write(child, `${indent}  `);
    lines.push(`${indent}</${element.qualifiedName}>`);
  };
  write(root, '');
  return `${lines.join('\n')}\n`;
}

/** Escapes text for XML content or a quoted attribute; line ends and tabs as references, so that a parser keeps them. */
function escapeXml(value: string): string {
  return value.replace(/[&<>'"\r\n\t]/gu, (char) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', "'": '&apos;', '"': '&quot;', '\r': '&#13;', '\n': '&#10;', '\t': '&#9;' })[char] as string);
}

/** A new element of libvirt's own (no namespace). */
export function newElement(name: string, attributes: Record<string, string> = {}, children: XmlElement[] = [], text = ''): XmlElement {
  return { qualifiedName: name, name, uri: '', attributes: Object.entries(attributes).map(([qualifiedName, value]) => ({ qualifiedName, uri: '', value })), children, text };
}

/** A deep copy of an element, to edit without touching the original. */
export function copyElement(element: XmlElement): XmlElement {
  return { ...element, attributes: element.attributes.map((a) => ({ ...a })), children: element.children.map(copyElement) };
}

/** Sets an attribute (libvirt's own, no namespace), in place where it is, last where it was not. */
export function setAttribute(element: XmlElement, qualifiedName: string, value: string): void {
  const existing = element.attributes.find((a) => a.qualifiedName === qualifiedName);
  if (existing) existing.value = value;
  else element.attributes.push({ qualifiedName, uri: '', value });
}

/** Removes an attribute, if there. */
export function removeAttribute(element: XmlElement, qualifiedName: string): void {
  element.attributes = element.attributes.filter((a) => a.qualifiedName !== qualifiedName);
}

/** Every element of that name as written, at any depth, in document order. */
export function descendantsNamed(element: XmlElement, qualifiedName: string): XmlElement[] {
  return element.children.flatMap((child) => [...(child.qualifiedName === qualifiedName ? [child] : []), ...descendantsNamed(child, qualifiedName)]);
}

/** The <disk> elements of <devices>, with their target device. */
function disksOf(domain: XmlElement): Array<{ target: string; element: XmlElement }> {
  return childrenNamed(firstChild(domain, 'devices'), 'disk').map((element) => ({ target: attributeOf(firstChild(element, 'target'), 'dev') ?? '', element }));
}

/** The disks named get driver type qcow2 (a <driver name='qemu'> is added first where none is). In place. */
export function setDiskFormatQcow2(domain: XmlElement, targets: readonly string[]): void {
  for (const { target, element } of disksOf(domain)) {
    if (!targets.includes(target)) continue;
    const driver = firstChild(element, 'driver');
    if (driver) setAttribute(driver, 'type', 'qcow2');
    else element.children.unshift(newElement('driver', { name: 'qemu', type: 'qcow2' }));
  }
}

/** The disks named get a new source file (a <source> is added first where none is). In place. */
export function setDiskPaths(domain: XmlElement, paths: Readonly<Record<string, string>>): void {
  for (const { target, element } of disksOf(domain)) {
    const path = paths[target];
    if (path === undefined) continue;
    const source = firstChild(element, 'source');
    if (source) setAttribute(source, 'file', path);
    else element.children.splice(firstChild(element, 'driver') ? 1 : 0, 0, newElement('source', { file: path }));
  }
}

/** The domain's <devices><emulator> names `path` (added first in <devices> where there is none). In place. */
export function setEmulator(domain: XmlElement, path: string): void {
  let devices = firstChild(domain, 'devices');
  if (!devices) domain.children.push((devices = newElement('devices')));
  const emulators = childrenNamed(devices, 'emulator');
  if (emulators.length === 0) devices.children.unshift(newElement('emulator', {}, [], path));
  for (const emulator of emulators) emulator.text = path;
}
