// Parses libvirt domain XML, once, into a typed record. The only module that imports xml2js.
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
}

// xml2js with `xmlns: true`: element values are arrays of nodes, attributes under `$`
// as {name, value, prefix, local, uri}, and each element's own namespace under `$ns`.
interface XmlAttr {
  value: string;
}
interface XmlNode {
  $?: Record<string, XmlAttr>;
  $ns?: { local: string; uri: string };
  _?: string;
  [child: string]: unknown;
}

/** Parses domain XML (as libvirt passes it to hooks or `virsh dumpxml` prints it). */
export async function parseDomainXml(xml: string): Promise<DomainRecord> {
  let doc: Record<string, unknown>;
  try {
    doc = (await parseStringPromise(xml, { xmlns: true, explicitArray: true })) as Record<string, unknown>;
  } catch (error) {
    throw new DiskStateError(`the domain XML cannot be parsed: ${(error as Error).message}`, { cause: error });
  }
  const domain = doc.domain as XmlNode | undefined;
  if (!domain) throw new DiskStateError('the XML is not a libvirt <domain> definition');

  const name = text(first(domain, 'name'));
  if (!name) throw new DiskStateError('the domain XML has no <name>');

  return {
    name,
    uuid: text(first(domain, 'uuid')),
    managed: isManaged(first(domain, 'metadata')),
    disks: children(first(domain, 'devices'), 'disk').map(toDisk),
  };
}

function isManaged(metadata: XmlNode | undefined): boolean {
  if (!metadata) return false;
  return Object.entries(metadata).some(
    ([key, value]) =>
      key !== '$' &&
      key !== '$ns' &&
      Array.isArray(value) &&
      (value as XmlNode[]).some((node) => node.$ns?.uri === NAMESPACE_URI && node.$ns.local === METADATA_ELEMENT),
  );
}

function toDisk(disk: XmlNode): DiskRecord {
  const source = first(disk, 'source');
  return {
    target: attr(first(disk, 'target'), 'dev') ?? '',
    type: attr(disk, 'type') ?? 'file',
    device: attr(disk, 'device') ?? 'disk',
    path: attr(source, 'file'),
    format: attr(first(disk, 'driver'), 'type'),
    readonly: first(disk, 'readonly') !== undefined,
    shareable: first(disk, 'shareable') !== undefined,
  };
}

/** The disks that are synced: writable file-backed disks (not CD-ROMs, not shared). */
export function syncedDisks(domain: DomainRecord): DiskRecord[] {
  return domain.disks.filter(
    (disk) => disk.device === 'disk' && disk.type === 'file' && disk.path !== undefined && !disk.readonly && !disk.shareable,
  );
}

function children(node: XmlNode | undefined, name: string): XmlNode[] {
  const value = node?.[name];
  return Array.isArray(value) ? value.map((item) => (typeof item === 'string' ? { _: item } : (item as XmlNode))) : [];
}

function first(node: XmlNode | undefined, name: string): XmlNode | undefined {
  return children(node, name)[0];
}

function attr(node: XmlNode | undefined, name: string): string | undefined {
  return node?.$?.[name]?.value;
}

function text(node: XmlNode | undefined): string | undefined {
  const value = node?._;
  return value === undefined ? undefined : value.trim();
}

/**
 * Rewrites the <disk> elements of domain XML as printed by libvirt (`virsh dumpxml`),
 * as text, leaving every other byte as it is: `edit` gets each disk's target device and
 * its element, and returns the element to put instead.
 */
export function editDisks(xml: string, edit: (target: string, element: string) => string): string {
  return xml.replace(/<disk\b[^>]*>[\s\S]*?<\/disk>/gu, (element) => {
    const target = /<target\b[^>]*\bdev=(['"])(.*?)\1/u.exec(element)?.[2];
    return target === undefined ? element : edit(unescapeXml(target), element);
  });
}

/** The disks named get driver type qcow2 (a <driver> element is added where none is). */
export function setDiskFormatQcow2(xml: string, targets: string[]): string {
  return editDisks(xml, (target, element) => {
    if (!targets.includes(target)) return element;
    if (/<driver\b/u.test(element)) {
      return element.replace(/<driver\b[^>]*?\/?>/u, (driver) =>
        /\btype=/u.test(driver) ? driver.replace(/\btype=(['"])[^'"]*\1/u, "type='qcow2'") : driver.replace(/<driver\b/u, "<driver type='qcow2'"),
      );
    }
    return element.replace(/^<disk\b[^>]*>/u, (open) => `${open}\n      <driver name='qemu' type='qcow2'/>`);
  });
}

/** The disks named get a new source file. */
export function setDiskPaths(xml: string, paths: Record<string, string>): string {
  return editDisks(xml, (target, element) => {
    const path = paths[target];
    if (path === undefined) return element;
    return element.replace(/(<source\b[^>]*?\bfile=)(['"])[^'"]*\2/u, (_all, start: string) => `${start}'${escapeXml(path)}'`);
  });
}

function escapeXml(value: string): string {
  return value.replace(/&/gu, '&amp;').replace(/</gu, '&lt;').replace(/>/gu, '&gt;').replace(/'/gu, '&apos;').replace(/"/gu, '&quot;');
}

function unescapeXml(value: string): string {
  return value.replace(/&(lt|gt|quot|apos|amp);/gu, (_all, name: string) => ({ lt: '<', gt: '>', quot: '"', apos: "'", amp: '&' })[name] as string);
}
