// The on-NAS format, version 4 (1 to 3 are read too). Pure: types, paths, parsing and validation.
//
//   <nas root>/
//     kss-nas.json                      {"format": 4}: marks the root, refuses newer formats
//     domains/<domain>/                 the domain name escaped (lib/file-names.ts)
//       manifest.json                   generations, head, layers, branches, lease
//       domain.xml                      the definition as enabled (kss clone of older generations)
//       definitions/<sha256>.xml        portable definitions (lib/definition.ts): immutable, named by hash
//       layers/<sha256>.qcow2           sealed layers: immutable, read-only, named by hash
//       uploads/<sha256>.<host>.part    uploads in progress; never named by a manifest
//       lock/owner.json                 the manifest lock (a directory: mkdir is atomic)
//
// A layer is published (renamed into layers/) only once complete and verified; a
// manifest names only published layers and is replaced atomically (temp, fsync, rename)
// under the lock, and only when its head is still the one the writer started from.
import { IntegrityError } from '../errors.js';
import { escapeFileName, layerFileName } from '../file-names.js';
import { isSha256, sha256Of } from '../hash.js';
import { loopIn } from './chains.js';

/**
 * Version 2 added merged layers (`readsAs`, `catchUpFor`), `hosts` and `dropped`: a
 * version-1 host would take a manifest that uses them for a damaged one, and remove
 * merged layers' files at once, so it is told to upgrade instead. Version 1 is read,
 * and written as 2 at the next change. Version 3 added state volumes (disks `@nvram`,
 * `@tpm`: lib/sync/state-volumes.ts), which a version-2 host would refuse as bad disk
 * names, or, given a generation without them, drop from the machine's state. Version 4
 * added a generation's `definition` (part of its id), which a version-3 host would take
 * for a damaged generation.
 */
export const NAS_FORMAT = 4;

/** The formats this version reads. */
const READS = new Set([1, 2, 3, NAS_FORMAT]);

/** A sealed layer file: its parent layer (null for a base) and its size in bytes. */
export interface LayerInfo {
  parent: string | null;
  size: number;
  /**
   * A merged layer (lib/nas/chains.ts): it reads exactly like the layer named here,
   * standing on `parent` instead of on that layer's own parent. Layers above and
   * generations keep naming that layer; a host may fetch this file in its place.
   */
  readsAs?: string;
  /** A merged layer made for this host's return (a catch-up): kept only while that host may still need it. */
  catchUpFor?: string;
}

/** What the NAS knows of a host: the generation it last was in step with, and when. */
export interface HostMark {
  generation: string;
  at: string;
}

/** One sealed layer per disk (by guest device name), with its parent generation. */
export interface Generation {
  id: string;
  parent: string | null;
  host: string;
  /** ISO 8601 time of sealing. */
  created: string;
  disks: Record<string, string>;
  /**
   * The SHA-256 of the domain's portable definition at rest (definitions/<hash>.xml, as
   * lib/definition.ts splits it). Absent in generations made before definitions travelled.
   */
  definition?: string;
  /**
   * A checkpoint (lib/checkpoint/): the disks as they were at one instant while the VM
   * ran, what a power cut then would have left. Not part of the id: a host of an older
   * version reads such a generation as any other, and so may this one.
   */
  checkpoint?: true;
}

/** The `definition` field of a generation: absent when not known. */
export function withDefinition(definition: string | undefined): { definition?: string } {
  return definition === undefined ? {} : { definition };
}

/** A kept line of history that is not the head: the losing side of a conflict. */
export interface Branch {
  head: string;
  host: string;
  created: string;
  reason: string;
}

/** A generation named by a person (`kss snapshot create`): kept until deleted. */
export interface Snapshot {
  generation: string;
  host: string;
  created: string;
}

/** Which host has the VM checked out, since when. */
export interface Lease {
  host: string;
  since: string;
}

export interface Manifest {
  /** NAS_FORMAT when written by this version; 1 when read from an older one. */
  format: number;
  domain: string;
  /** Increases by one with every update: tells a reader whether anything changed. */
  revision: number;
  head: string | null;
  generations: Record<string, Generation>;
  layers: Record<string, LayerInfo>;
  branches: Record<string, Branch>;
  /** Absent in manifests written before snapshots existed. */
  snapshots?: Record<string, Snapshot>;
  lease: Lease | null;
  /** Absent in manifests written before catch-up layers existed. */
  hosts?: Record<string, HostMark>;
  /**
   * Layer files no longer listed, with the time they left the manifest: removed once a
   * grace period has passed (a host may be in the middle of fetching one). Absent: none.
   */
  dropped?: Record<string, string>;
}

/** Paths on the NAS, relative to its root. */
export const nasPaths = {
  marker: 'kss-nas.json',
  domainDir: (domain: string) => `domains/${escapeFileName(domain)}`,
  manifest: (domain: string) => `${nasPaths.domainDir(domain)}/manifest.json`,
  domainXml: (domain: string) => `${nasPaths.domainDir(domain)}/domain.xml`,
  definitionsDir: (domain: string) => `${nasPaths.domainDir(domain)}/definitions`,
  definition: (domain: string, hash: string) => `${nasPaths.definitionsDir(domain)}/${hash}.xml`,
  layersDir: (domain: string) => `${nasPaths.domainDir(domain)}/layers`,
  layer: (domain: string, hash: string) => `${nasPaths.layersDir(domain)}/${layerFileName(hash)}`,
  uploadsDir: (domain: string) => `${nasPaths.domainDir(domain)}/uploads`,
  upload: (domain: string, hash: string, host: string) =>
    `${nasPaths.uploadsDir(domain)}/${hash}.${escapeFileName(host)}.part`,
  lock: (domain: string) => `${nasPaths.domainDir(domain)}/lock`,
};

/** Whether a file name in uploads/ is one an upload makes (`nasPaths.upload`, over SSH with an attempt's token after it). */
export function isUploadName(name: string): boolean {
  return /^[0-9a-f]{64}\.[A-Za-z0-9._%-]+\.part(\.[0-9a-f]+)?$/u.test(name);
}

/** A manifest for a domain that has nothing on the NAS yet. */
export function emptyManifest(domain: string): Manifest {
  return { format: NAS_FORMAT, domain, revision: 0, head: null, generations: {}, layers: {}, branches: {}, lease: null };
}

/** The id of a generation: the SHA-256 of what it is made of, so it pins its history. */
export function generationId(generation: Omit<Generation, 'id'>): string {
  const disks = Object.keys(generation.disks)
    .sort()
    .map((target) => [target, generation.disks[target]]);
  const made = [generation.parent, generation.host, generation.created, disks];
  const canonical = JSON.stringify(generation.definition === undefined ? made : [...made, generation.definition]);
  return sha256Of(canonical);
}

/** Serializes a manifest (stable key order as built, indented for people who look). */
export function serializeManifest(manifest: Manifest): Buffer {
  return Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`);
}

/**
 * The largest manifest a host reads. A year of generations is well under 1 MiB; a
 * bigger file is damage or an attack, refused before it is parsed.
 */
export const MANIFEST_MAX_BYTES = 16 * 2 ** 20;

/** The largest format marker (`{"format": 2}`) a host reads. */
export const MARKER_MAX_BYTES = 4096;

/** The largest domain definition (domain.xml, a portable definition) a host reads from the NAS. */
export const DOMAIN_XML_MAX_BYTES = 2 ** 20;

/**
 * Parses and validates a manifest; `where` names it in errors, and `domain` is the one
 * asked for: a manifest that names another is refused. Throws Error with the problem.
 */
export function parseManifest(text: string, where: string, domain: string): Manifest {
  if (Buffer.byteLength(text) > MANIFEST_MAX_BYTES) throw new Error(`${where} is larger than ${MANIFEST_MAX_BYTES} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new Error(`${where} is not valid JSON: ${(error as Error).message}`);
  }
  const problem = manifestProblem(raw) ?? (isObject(raw) && raw.domain !== domain ? `it is the manifest of domain ${JSON.stringify(raw.domain)}, not of ${domain}` : undefined);
  if (problem) throw new Error(`${where}: ${problem}`);
  return raw as Manifest;
}

/**
 * What is wrong with a parsed manifest, or undefined when it is valid. Anything that
 * can write to the NAS can write this file, so all of it is checked: every id is the
 * hash of what it names (a generation's parents cannot loop without breaking SHA-256),
 * every reference resolves, the layers' parents do not loop, sizes and times are what
 * they claim. A generation's parent may be missing: retention drops old generations,
 * and their history ends there.
 */
export function manifestProblem(raw: unknown): string | undefined {
  if (!isObject(raw)) return 'not a JSON object';
  if (typeof raw.format !== 'number') return 'no format version';
  if (raw.format > NAS_FORMAT) {
    return `format ${raw.format} was written by a newer kvm-snapshot-sync (this one reads ${NAS_FORMAT}): upgrade it`;
  }
  if (!READS.has(raw.format)) return `unknown format ${raw.format}`;
  if (!isPrintable(raw.domain)) return 'no domain name';
  if (!isCount(raw.revision)) return 'bad revision';
  if (!isObject(raw.generations) || !isObject(raw.layers) || !isObject(raw.branches)) return 'missing tables';

  const layers = raw.layers as Record<string, unknown>;
  // A name is provided by its own file, or by a merged layer that reads as it (as lib/nas/chains.ts providers).
  const provided = new Set<string>();
  for (const [hash, info] of Object.entries(layers)) provided.add(isObject(info) && typeof info.readsAs === 'string' ? info.readsAs : hash);
  for (const [hash, info] of Object.entries(layers)) {
    if (!isSha256(hash) || !isObject(info)) return `bad layer entry ${shown(hash)}`;
    if (info.parent !== null && !(typeof info.parent === 'string' && provided.has(info.parent))) {
      return `layer ${hash} names a parent that is not listed`;
    }
    if (!isCount(info.size)) return `layer ${hash} has no size`;
    if (info.readsAs !== undefined && !(typeof info.readsAs === 'string' && isSha256(info.readsAs) && info.readsAs !== hash)) return `layer ${hash}: bad readsAs`;
    if (info.catchUpFor !== undefined && !(isPrintable(info.catchUpFor) && info.readsAs !== undefined)) return `layer ${hash}: bad catchUpFor`;
  }
  const loop = loopIn(layers as Record<string, LayerInfo>);
  if (loop) return `the parents of layer ${loop} loop`;
  const generations = raw.generations as Record<string, unknown>;
  for (const [id, generation] of Object.entries(generations)) {
    const problem = generationProblem(id, generation, provided);
    if (problem) return `generation ${isSha256(id) ? id : shown(id)}: ${problem}`;
  }
  if (raw.head !== null && !(typeof raw.head === 'string' && Object.hasOwn(generations, raw.head))) {
    return 'the head is not a listed generation';
  }
  for (const [name, branch] of Object.entries(raw.branches as Record<string, unknown>)) {
    if (!isPrintable(name)) return 'a branch name that is not printable';
    if (!isObject(branch) || typeof branch.head !== 'string' || !Object.hasOwn(generations, branch.head)) {
      return `branch ${name} does not name a listed generation`;
    }
    if (!isPrintable(branch.host) || !isTime(branch.created) || !isPrintable(branch.reason)) return `branch ${name}: bad host, time or reason`;
  }
  if (raw.snapshots !== undefined && !isObject(raw.snapshots)) return 'bad snapshots table';
  for (const [name, snapshot] of Object.entries((raw.snapshots ?? {}) as Record<string, unknown>)) {
    if (!isPrintable(name)) return 'a snapshot name that is not printable';
    if (!isObject(snapshot) || typeof snapshot.generation !== 'string' || !Object.hasOwn(generations, snapshot.generation)) {
      return `snapshot ${name} does not name a listed generation`;
    }
    if (!isPrintable(snapshot.host) || !isTime(snapshot.created)) return `snapshot ${name}: bad host or time`;
  }
  if (raw.lease !== null && !(isObject(raw.lease) && isPrintable(raw.lease.host) && isTime(raw.lease.since))) {
    return 'bad lease';
  }
  if (raw.hosts !== undefined && !isObject(raw.hosts)) return 'bad hosts table';
  if (Object.keys(raw.hosts ?? {}).length > MAX_HOSTS) return `more than ${MAX_HOSTS} hosts in the hosts table`;
  for (const [name, mark] of Object.entries((raw.hosts ?? {}) as Record<string, unknown>)) {
    // Its generation may be gone: retention does not keep a host's old place for ever.
    if (!isPrintable(name) || !isObject(mark) || typeof mark.generation !== 'string' || !isSha256(mark.generation) || !isTime(mark.at)) return `bad host entry ${shown(name)}`;
  }
  if (raw.dropped !== undefined && !isObject(raw.dropped)) return 'bad dropped table';
  for (const [hash, at] of Object.entries((raw.dropped ?? {}) as Record<string, unknown>)) {
    if (!isSha256(hash) || !isTime(at) || Object.hasOwn(layers, hash)) return `bad dropped entry ${shown(hash)}`;
  }
  return undefined;
}

/** The most hosts a manifest may name in `hosts`: a VM follows a person between a few machines. */
export const MAX_HOSTS = 16;

/** A guest device name as libvirt writes it (vda, sdb, nvme0n1): safe in messages and file names. */
/** A guest device name, or a state volume's (`@nvram`, `@tpm`). */
const DISK_TARGET = /^([A-Za-z0-9_-]{1,64}|@nvram|@tpm)$/u;

function generationProblem(id: string, generation: unknown, provided: Set<string>): string | undefined {
  if (!isObject(generation) || generation.id !== id || !isSha256(id)) return 'bad entry';
  if (generation.parent !== null && !(typeof generation.parent === 'string' && isSha256(generation.parent))) return 'bad parent';
  if (!isPrintable(generation.host) || !isTime(generation.created)) return 'bad host or time';
  if (!isObject(generation.disks) || Object.keys(generation.disks).length === 0) return 'no disks';
  for (const [target, layer] of Object.entries(generation.disks)) {
    if (!DISK_TARGET.test(target)) return `bad disk name ${shown(target)}`;
    if (typeof layer !== 'string' || !provided.has(layer)) return `disk ${target} names an unlisted layer`;
  }
  if (generation.definition !== undefined && !(typeof generation.definition === 'string' && isSha256(generation.definition))) return 'bad definition';
  if (generation.checkpoint !== undefined && generation.checkpoint !== true) return 'bad checkpoint mark';
  const made = {
    parent: generation.parent,
    host: generation.host,
    created: generation.created,
    disks: generation.disks as Record<string, string>,
    ...withDefinition(generation.definition as string | undefined),
  };
  if (generationId(made) !== id) return 'its id is not the hash of its content';
  return undefined;
}

function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0;
}

/**
 * A name or a reason as a person reads it (kss status, a refusal virsh shows): bounded,
 * and without control characters, which a terminal would take for escape sequences.
 */
export function isPrintable(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= 256 && !UNPRINTABLE.test(value);
}

/**
 * C0 and C1 controls, DEL, and the bidirectional marks, overrides and isolates that
 * reorder what a terminal shows, line and paragraph separators, the byte-order mark.
 */
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]/u;

/** Text from the NAS as it may appear in a message: quoted, cut short, anything unprintable (and quotes) escaped. */
export function shown(text: string): string {
  const quoted = JSON.stringify(Array.from(text).slice(0, 80).join(''));
  return quoted.replace(new RegExp(UNPRINTABLE.source, 'gu'), (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}


/** A time as toISOString writes it. */
function isTime(value: unknown): value is string {
  return typeof value === 'string' && /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/u.test(value) && !Number.isNaN(Date.parse(value));
}

/**
 * The generations from `id` back through their parents, nearest first, as long as
 * `more` says (given each generation and its distance from `id`); stops at one the
 * manifest no longer lists (retention removed it). Bounded: a manifest whose parents
 * loop (anything that can write the NAS can write the manifest) throws an IntegrityError
 * instead of walking forever.
 */
export function ancestry(generations: Record<string, Generation>, id: string | null, more: (generation: Generation, index: number) => boolean = () => true): Generation[] {
  const line: Generation[] = [];
  const seen = new Set<string>();
  for (let current = id; current !== null; current = line.at(-1)?.parent ?? null) {
    if (seen.has(current)) throw loopError('generation', current);
    seen.add(current);
    const generation = generations[current];
    if (!generation || !more(generation, line.length)) break;
    line.push(generation);
  }
  return line;
}

function loopError(what: string, at: string): IntegrityError {
  return new IntegrityError(`the NAS manifest is damaged: its ${what} parents loop at ${at}`, {
    remedy: 'nothing was changed; the manifest on the NAS was written by hand or corrupted: restore it from a backup, or move the domain directory aside and push again from the host that has the VM',
  });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
