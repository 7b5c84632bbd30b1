// The machine's state at rest that is not on its disks: the UEFI variable store
// (`<os><nvram>`) and the emulated TPM's state directory (swtpm, <swtpmDir>/<uuid>/).
// Each travels as a *state volume*: a small qcow2 volume, target `@nvram` or `@tpm`,
// whose content is a bundle of the files (lib/state-bundle.ts). It is a disk of the
// generation like any other, so sealing, pushing, verifying, pulling, merging,
// compaction, retention, rollback, resolve and clone handle it with no code of their
// own; QEMU never opens it. Its top lives under the domain's state directory
// (volumes/nvram.qcow2, its layers beside it).
//
//   capture  before a seal: files that changed since this host last captured or placed
//            them are written into the volume's top, only the 64 KiB clusters that
//            differ, so that a layer holds what changed.
//   place    at a start, before QEMU runs (and after a pull): the files become what
//            the volume holds. Files this host never synced are first kept aside as
//            `<file>.kss-before-<time>`: nothing the guest wrote is lost.
import { constants } from 'node:fs';
import { chmod, chown, link, lstat, mkdir, mkdtemp, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { readGroups, readPasswd } from '../accounts.js';
import { fsyncDir, fsyncFile, pathExists, renameDurably, tempPathBeside } from '../durable-fs.js';
import type { DomainRecord } from '../domain-xml.js';
import { DiskStateError, IntegrityError } from '../errors.js';
import { sha256Of } from '../hash.js';
import { createTop, incomingPathOf, layerPathOf, readImageInfo, removeLeftovers, type EngineDeps } from '../layers.js';
import type { Logger } from '../log.js';
import { QEMU_CONF, parseQemuConf, swtpmOwner } from '../qemu-access.js';
import { createImageCommand, ioWriteCommand, readRawCommand, type IoWrite } from '../qemu-img.js';
import { bundleLength, decodeBundle, encodeBundle, type BundleFile } from '../state-bundle.js';
import { domainStateDir, localHead, type LocalState } from './local-state.js';

export type VolumeKind = 'nvram' | 'tpm';

/** Where one kind of state lives on this host: the NVRAM file, or the TPM's directory. */
export interface StateSource {
  kind: VolumeKind;
  path: string;
}

/** The virtual size of a state volume: far more than any variable store or TPM state (sparse: it costs what it holds). */
export const VOLUME_SIZE = 64 * 2 ** 20;
/** What is compared and written at a time: the volume's qcow2 cluster. */
export const CLUSTER = 64 * 1024;
/** The NVRAM file's name in its bundle (its own name is the host's business). */
const NVRAM_ENTRY = 'nvram';
/**
 * Every state file's mode, captured and placed: 0600, as libvirt and swtpm make them. A
 * bundle's modes are not trusted, and a mode that differs between the hosts would make
 * each start place the files again.
 */
const STATE_MODE = 0o600;
/** The most one kind of state may hold, in all: half its volume (a bundle's index and header fit beside). */
const MAX_STATE_BYTES = VOLUME_SIZE / 2;

/** Whether a generation's disk target is a state volume, not a disk. */
export function isStateVolume(target: string): boolean {
  return target.startsWith('@');
}

function kindOf(target: string): VolumeKind {
  return target.slice(1) as VolumeKind;
}

/** Pure: the state a domain keeps outside its disks, as its definition names it. */
export function stateSourcesOf(domain: DomainRecord, swtpmDir: string): StateSource[] {
  const sources: StateSource[] = [];
  if (domain.nvram !== undefined) sources.push({ kind: 'nvram', path: domain.nvram });
  if (domain.tpmEmulator && domain.uuid !== undefined) sources.push({ kind: 'tpm', path: join(swtpmDir, domain.uuid.toLowerCase()) });
  return sources;
}

/**
 * Makes the state's disks include the volumes of `sources` (and no others), each with
 * what this host knows of it; a volume whose source moved starts unknown.
 */
export function attachStateVolumes(state: LocalState, sources: readonly StateSource[], stateDir: string): void {
  const disks = Object.fromEntries(Object.entries(state.disks).filter(([target]) => !isStateVolume(target)));
  const volumes: NonNullable<LocalState['volumes']> = {};
  for (const { kind, path } of sources) {
    const target = `@${kind}`;
    disks[target] = join(domainStateDir(stateDir, state.domain), 'volumes', `${kind}.qcow2`);
    const known = state.volumes?.[target];
    volumes[target] = known?.source === path ? known : { source: path };
  }
  state.disks = disks;
  state.volumes = sources.length > 0 ? volumes : undefined;
}

/**
 * When a capture runs (each before a seal):
 *   enable  the files as they are become the first state, in new volumes;
 *   stop    what the VM changed, since the start that let it run on those files
 *           (`seen`: files no start of this host ran on are never taken for the
 *           machine's state, e.g. a stop after a refused start, or a kss push after
 *           kss clone where another VM of that name ran), a new volume if there is none
 *           yet (new in the definition, or a domain enabled before volumes existed);
 *   start   what a run that did not stop cleanly changed, into existing volumes only;
 *           and so before a rollback or a resolve moves the tops.
 */
export type CaptureMoment = 'enable' | 'stop' | 'start';

/**
 * Writes the files of each volume into its top when they changed since this host last
 * captured or placed them (the next seal makes a layer of it; a new volume's seal makes
 * its base).
 */
export async function captureStateVolumes(state: LocalState, deps: EngineDeps, save: (state: LocalState) => Promise<void>, moment: CaptureMoment): Promise<void> {
  if (state.sealing) return; // capture came before that seal began: it is finished first
  for (const [target, volume] of Object.entries(state.volumes ?? {})) {
    const top = state.disks[target];
    if (top === undefined || (await pathExists(incomingPathOf(top)))) continue; // a seal to finish: the next capture sees the files
    const files = await readStateFiles(kindOf(target), volume.source);
    const bundle = encodeBundle(files);
    const digest = sha256Of(bundle);
    const exists = await pathExists(top);
    if ((digest === volume.seen && exists) || (volume.seen === undefined && moment !== 'enable')) continue;
    // Files gone are never taken for the machine's state: a place cut between its two
    // renames leaves no TPM directory (the volume still holds it, and the next place puts
    // it back), and libvirt would make a new TPM, or copy the template, in their stead.
    if (files.length === 0 && exists) continue;
    if (!exists) {
      if (moment === 'start') continue;
      const layer = localHead(state)?.disks[target];
      if (layer === undefined) await createVolume(top, deps);
      else if (await pathExists(layerPathOf(top, layer))) await createTop(top, layer, deps);
      else continue; // not fetched here (a start without the NAS)
    }
    deps.onStep?.('volume:capture');
    const old = await readVolume(top, deps).catch((error: unknown) => {
      if (error instanceof IntegrityError) return undefined; // overwritten whole
      throw error;
    });
    await writeVolume(top, volumeWrites(old, bundle), deps);
    volume.seen = digest;
    await save(state);
  }
}

/**
 * Puts each volume's files in place, before QEMU starts: where they differ from what
 * the volume holds, they are replaced, atomically (files this host never synced are
 * kept aside first). A volume that holds nothing (the files did not exist where it
 * was captured), or none at all, leaves the files here as they are. Either way the
 * files are then the ones the VM runs on: `seen` (see captureStateVolumes).
 */
export async function placeStateVolumes(state: LocalState, deps: EngineDeps, save: (state: LocalState) => Promise<void>, log: Logger, now: Date): Promise<void> {
  for (const [target, volume] of Object.entries(state.volumes ?? {})) {
    const top = state.disks[target];
    const kind = kindOf(target);
    const files = top !== undefined && (await pathExists(top)) ? decodeBundle(await readVolume(top, deps)) : undefined;
    const here = await readStateFiles(kind, volume.source);
    let runsOn = sha256Of(encodeBundle(here));
    if (files !== undefined && files.length > 0) {
      requirePlaceable(kind, files);
      const wanted = sha256Of(encodeBundle(files));
      if (runsOn !== wanted) {
        const keptAside = here.length > 0 && runsOn !== volume.seen ? `${volume.source}.kss-before-${now.toISOString().replace(/[:.]/gu, '-')}` : undefined;
        deps.onStep?.('volume:place');
        if (kind === 'nvram') await placeNvram(volume.source, files, keptAside);
        else await placeTpmState(volume.source, files, keptAside, deps);
        log.info('placed state', { volume: target, path: volume.source, files: files.length });
        if (keptAside) log.warn('kept files this host had never synced aside', { volume: target, keptAs: keptAside });
      }
      runsOn = wanted;
    }
    if (volume.seen !== runsOn) {
      volume.seen = runsOn;
      await save(state);
    }
  }
}

/** The files of one kind of state as they are now (none when they do not exist). */
async function readStateFiles(kind: VolumeKind, path: string): Promise<BundleFile[]> {
  if (kind === 'nvram') {
    const data = await readRegularFile(path);
    return data ? [{ path: NVRAM_ENTRY, mode: STATE_MODE, data }] : [];
  }
  // A TPM state directory: its files and those of its directories (tpm2/), lock files aside.
  const files: BundleFile[] = [];
  const entries = await readdir(path, { withFileTypes: true }).catch(ignoreMissing([]));
  const add = async (name: string) => {
    const data = await readRegularFile(join(path, name));
    if (data) files.push({ path: name, mode: STATE_MODE, data });
  };
  for (const entry of entries) {
    if (entry.name.startsWith('.')) continue;
    if (entry.isFile()) await add(entry.name);
    if (!entry.isDirectory()) continue;
    for (const inner of await readdir(join(path, entry.name), { withFileTypes: true })) {
      if (inner.isFile() && !inner.name.startsWith('.')) await add(`${entry.name}/${inner.name}`);
    }
  }
  const bytes = totalBytes(files);
  if (bytes > MAX_STATE_BYTES) {
    throw new DiskStateError(`${path} holds ${bytes} bytes: more than a TPM state, and more than its volume takes`, { remedy: 'move what does not belong to the TPM out of that directory' });
  }
  return files;
}

/**
 * A state file's bytes (undefined: it does not exist). Never through a symlink: the
 * directories are QEMU's or swtpm's to write, and this runs as root.
 */
async function readRegularFile(path: string): Promise<Buffer | undefined> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    if (error.code === 'ELOOP') throw new DiskStateError(`${path} is a symlink: kvm-snapshot-sync follows none in the firmware's and the TPM's state`, { remedy: 'put the file itself there' });
    throw error;
  });
  if (!handle) return undefined;
  try {
    const found = await handle.stat();
    if (!found.isFile() || found.size > MAX_STATE_BYTES) throw new DiskStateError(`${path} is not a firmware or TPM state file (not a regular file, or too large)`);
    return await handle.readFile();
  } finally {
    await handle.close();
  }
}

/**
 * A bundle from the NAS is put in place only in the shape a capture gives it: one NVRAM
 * file, or at most MAX_FILES TPM files, in all no more than a capture takes.
 */
function requirePlaceable(kind: VolumeKind, files: readonly BundleFile[]): void {
  const bytes = totalBytes(files);
  const nvramShape = files.length === 1 && files[0]?.path === NVRAM_ENTRY;
  if (bytes > MAX_STATE_BYTES || (kind === 'nvram') !== nvramShape) {
    throw new IntegrityError(`the @${kind} volume holds ${files.length} file(s) of ${bytes} bytes (${files.map((f) => f.path).join(', ')}): not what kvm-snapshot-sync captures`, {
      remedy: 'roll back to an earlier generation (kss snapshot list), or check the NAS',
    });
  }
}

function totalBytes(files: readonly BundleFile[]): number {
  return files.reduce((sum, file) => sum + file.data.length, 0);
}

/**
 * The bytes of a volume's bundle, read through its chain (empty when it holds none).
 * Its size is checked first: its layers come from the NAS.
 */
async function readVolume(top: string, deps: EngineDeps): Promise<Buffer> {
  const { virtualSize } = await readImageInfo(top, deps);
  if (virtualSize !== VOLUME_SIZE) {
    throw new IntegrityError(`the state volume ${top} is ${virtualSize} bytes, not ${VOLUME_SIZE}: it was not made by kvm-snapshot-sync`, {
      remedy: 'roll back to an earlier generation (kss snapshot list), or check the NAS',
    });
  }
  return withTempDir(async (dir) => {
    const raw = join(dir, 'volume.raw');
    await deps.run(readRawCommand(top, raw));
    const handle = await open(raw, 'r');
    try {
      const head = Buffer.alloc(CLUSTER);
      await handle.read(head, 0, CLUSTER, 0);
      if (head.every((byte) => byte === 0)) return Buffer.alloc(0);
      const length = bundleLength(head);
      if (length > VOLUME_SIZE) throw new IntegrityError(`the state volume ${top} claims a bundle of ${length} bytes, beyond its size`);
      const bytes = Buffer.alloc(length);
      await handle.read(bytes, 0, length, 0);
      return bytes;
    } finally {
      await handle.close();
    }
  });
}

/**
 * Pure: the writes that turn a volume holding `old` (its bundle's bytes; undefined:
 * unreadable, so everything is written) into one holding `bundle`: each 64 KiB cluster
 * that differs, and zeros where the old bundle reached further.
 */
export function volumeWrites(old: Buffer | undefined, bundle: Buffer): Array<{ offset: number; length: number; data?: Buffer }> {
  const writes: Array<{ offset: number; length: number; data?: Buffer }> = [];
  const cluster = (bytes: Buffer, offset: number) => {
    const part = Buffer.alloc(CLUSTER);
    if (offset < bytes.length) bytes.copy(part, 0, offset, Math.min(bytes.length, offset + CLUSTER));
    return part;
  };
  const end = Math.ceil(Math.max(bundle.length, old?.length ?? 0) / CLUSTER) * CLUSTER;
  for (let offset = 0; offset < end; offset += CLUSTER) {
    const next = cluster(bundle, offset);
    if (old !== undefined && next.equals(cluster(old, offset))) continue;
    writes.push(offset < bundle.length ? { offset, length: CLUSTER, data: next } : { offset, length: CLUSTER });
  }
  if (old === undefined && end < VOLUME_SIZE) writes.push({ offset: end, length: VOLUME_SIZE - end });
  return writes;
}

async function writeVolume(top: string, writes: ReturnType<typeof volumeWrites>, deps: EngineDeps): Promise<void> {
  if (writes.length === 0) return;
  await withTempDir(async (dir) => {
    const io: IoWrite[] = [];
    for (const [index, { offset, length, data }] of writes.entries()) {
      if (data === undefined) {
        io.push({ offset, length });
        continue;
      }
      const source = join(dir, `cluster-${index}`);
      const handle = await open(source, 'wx', 0o600);
      await handle.writeFile(data).finally(() => handle.close());
      io.push({ offset, length, source });
    }
    await deps.run(ioWriteCommand(top, io));
  });
  await fsyncFile(top);
}

/** A standalone volume with nothing in it, made under a temporary name. */
async function createVolume(top: string, deps: EngineDeps): Promise<void> {
  await mkdir(dirname(top), { recursive: true, mode: 0o700 });
  await removeLeftovers(dirname(top), `.${basename(top)}.new-`);
  const temp = tempPathBeside(top, 'new');
  await deps.run(createImageCommand(temp, VOLUME_SIZE));
  await chmod(temp, 0o600);
  await fsyncFile(temp);
  await renameDurably(temp, top);
}

/**
 * Replaces the NVRAM file atomically (never through a symlink at its path), with the
 * owner of the file it replaces (libvirt's label: it relabels at start), mode 0600.
 */
async function placeNvram(path: string, files: BundleFile[], keptAside: string | undefined): Promise<void> {
  const [file] = files as [BundleFile];
  const old = await lstat(path).catch(ignoreMissing(undefined));
  if (old?.isSymbolicLink()) throw new DiskStateError(`${path} is a symlink: kvm-snapshot-sync follows none in the firmware's state`, { remedy: 'put the file itself there' });
  const made = await mkdir(dirname(path), { recursive: true });
  if (made !== undefined) await chmod(dirname(path), 0o755);
  await removeLeftovers(dirname(path), `.${basename(path)}.kss-new-`);
  const temp = tempPathBeside(path, 'kss-new');
  await writeWhole(temp, file.data, old ? { uid: old.uid, gid: old.gid } : undefined);
  if (old && keptAside) await link(path, keptAside);
  await renameDurably(temp, path);
}

/**
 * Replaces the TPM state directory: the new one is built beside it (owned by swtpm's
 * user, as libvirt makes it: swtpm must open its files), then swapped in. A cut
 * anywhere leaves the old directory, or the new one, or neither (the volume still holds
 * it: the next place puts it back) and a leftover that holds only synced state.
 */
async function placeTpmState(dir: string, files: BundleFile[], keptAside: string | undefined, deps: EngineDeps): Promise<void> {
  const [fresh, old] = [`${dir}.kss-new`, `${dir}.kss-old`];
  await rm(fresh, { recursive: true, force: true });
  await rm(old, { recursive: true, force: true });
  const owner = swtpmOwner(parseQemuConf(await readFile(QEMU_CONF, 'utf8').catch(() => '')), await readPasswd(), await readGroups());
  // As libvirt makes them (the hook's umask is private): swtpm_storage_dir and the
  // domain's directory root's and traversable, the TPM's own directory swtpm's.
  const made = await mkdir(dirname(dir), { recursive: true });
  if (made !== undefined) await chmod(dirname(dir), 0o711);
  await mkdir(fresh);
  const inner = new Set<string>();
  for (const file of files) {
    const sub = join(fresh, dirname(file.path));
    if (sub !== fresh && !inner.has(sub)) {
      await mkdir(sub);
      inner.add(sub);
    }
    await writeWhole(join(fresh, file.path), file.data, owner);
  }
  for (const sub of inner) {
    await chmod(sub, 0o700);
    if (owner) await chown(sub, owner.uid, owner.gid);
    await fsyncDir(sub);
  }
  await chmod(fresh, 0o711);
  await fsyncDir(fresh);
  deps.onStep?.('volume:swap');
  if (await pathExists(dir)) await rename(dir, keptAside ?? old);
  deps.onStep?.('volume:swap-in');
  await renameDurably(fresh, dir);
  await rm(old, { recursive: true, force: true });
}

/** A new file (never through a link: created exclusively), STATE_MODE, owned by `owner` (root when none). */
async function writeWhole(path: string, data: Buffer, owner: { uid: number; gid: number } | undefined): Promise<void> {
  const handle = await open(path, 'wx', STATE_MODE);
  try {
    await handle.writeFile(data);
    await handle.chmod(STATE_MODE);
    if (owner) await handle.chown(owner.uid, owner.gid);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function withTempDir<T>(work: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'kss-volume-'));
  try {
    return await work(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function ignoreMissing<T>(value: T): (error: unknown) => T {
  return (error) => {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return value;
    throw error;
  };
}
