// The NAS repository: the on-NAS format (lib/nas/format.ts) over a transport. The one
// place that knows the order that keeps the NAS whole: layers are published complete
// and verified first; the manifest that names them is written after, atomically, under
// the domain's NAS lock, and only if its head is still the one the writer started from.
import { chmod, link, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fsyncDir, mkdirShared } from '../durable-fs.js';
import { hashOfLayerFileName, layerFileName } from '../file-names.js';
import { LAYER_MODE } from '../layers.js';
import { sha256Of } from '../hash.js';
import { ConflictError, DiskStateError, IntegrityError, LeaseHeldError, LockedError, UsageError } from '../errors.js';
import type { Logger } from '../log.js';
import { layerHeaderProblem, parseQcow2Header, readLayerHeader } from '../qcow2-header.js';
import {
  DOMAIN_XML_MAX_BYTES,
  MANIFEST_MAX_BYTES,
  MARKER_MAX_BYTES,
  NAS_FORMAT,
  emptyManifest,
  isUploadName,
  generationId,
  manifestProblem,
  nasPaths,
  parseManifest,
  serializeManifest,
  withDefinition,
  type Generation,
  type LayerInfo,
  type Manifest,
} from './format.js';
import { isProvided } from './chains.js';
import { lockClaim, NasLockWaiter } from './nas-lock.js';
import { applyRetention, planRetention, type RetentionPlan, type RetentionPolicy } from './retention.js';
import type { NasTransport, TransferProgress, TransferResult } from './transport.js';

export interface RepositoryOptions {
  /** This host's name: lock owner, upload names, generation authorship. */
  host: string;
  log?: Logger;
  lockWaitMs?: number;
  lockStaleMs?: number;
  now?: () => Date;
}

export interface NewGeneration {
  /** The head this generation was made on; the push is refused if the NAS moved on. */
  parent: string | null;
  created: string;
  disks: Record<string, string>;
  /** Its portable definition's hash (pushed already: pushDefinition), when it has one. */
  definition?: string;
  /** The layers it adds, all already pushed. */
  layers: Record<string, LayerInfo>;
  /** A checkpoint of a running VM (lib/checkpoint/). */
  checkpoint?: true;
}

/** What a manifest update does with the lease. */
export type LeaseChange = 'take' | 'release' | 'keep';

export interface GcResult {
  droppedGenerations: string[];
  droppedBranches: string[];
  /** Layer files that left the manifest now (removed once the grace period has passed). */
  droppedLayers: string[];
  /** Layer files removed now. */
  removedLayers: string[];
}

/**
 * How long a layer file stays after it left the manifest (a host may be fetching it),
 * and how old a file the manifest never named must be (a push may be about to name it).
 */
export const GC_GRACE_MS = 24 * 3600_000;

/** At most this many files are removed in one compare-and-swap (the next pass removes the rest). */
const REMOVALS_PER_PASS = 256;

/** A manifest as read, with the SHA-256 of its bytes (what a compare-and-swap compares). */
interface ReadManifest {
  manifest: Manifest | undefined;
  sha256: string | null;
}

/** Where a pull of layer `hash` into `localDir` keeps what it has so far (it resumes from there). */
export function pullPartPath(localDir: string, hash: string): string {
  return join(localDir, `.pull-${hash}.part`);
}

/** Whether a file name in a layers directory is a pull's part (pullPartPath). */
export function isPullPartName(name: string): boolean {
  return /^\.pull-[0-9a-f]{64}\.part$/u.test(name);
}

export class NasRepository {
  private markerChecked = false;
  /**
   * The last manifest read or written, per domain: an update starts from it instead of
   * reading again (one round trip less in a start). Safe because the compare-and-swap
   * refuses to write over anything else, and a refusal by `change` is only believed
   * after a fresh read.
   */
  private readonly lastSeen = new Map<string, ReadManifest>();

  constructor(
    readonly transport: NasTransport,
    private readonly options: RepositoryOptions,
  ) {}

  /** The domain's manifest, or undefined when the NAS has nothing for it. */
  async readManifest(domain: string): Promise<Manifest | undefined> {
    return (await this.readManifestAndHash(domain)).manifest;
  }

  private async readManifestAndHash(domain: string): Promise<ReadManifest> {
    const path = nasPaths.manifest(domain);
    const data = await this.transport.readFile(path, MANIFEST_MAX_BYTES);
    if (data === undefined) return this.seen(domain, { manifest: undefined, sha256: null });
    try {
      const manifest = parseManifest(data.toString('utf8'), `${this.transport.where}/${path}`, domain);
      return this.seen(domain, { manifest, sha256: sha256Of(data) });
    } catch (error) {
      throw new IntegrityError((error as Error).message, {
        remedy: 'the manifest on the NAS is damaged or from a newer version; nothing was changed',
      });
    }
  }

  /** Uploads a sealed local layer (resumable, verified on arrival, then published); `maxBytesPerSecond`: a cap, if any. */
  pushLayer(domain: string, localPath: string, hash: string, onProgress?: TransferProgress, maxBytesPerSecond?: number): Promise<TransferResult> {
    return this.transport.putLayer(localPath, hash, nasPaths.upload(domain, hash, this.options.host), nasPaths.layer(domain, hash), {
      onProgress,
      ...(maxBytesPerSecond ? { maxBytesPerSecond } : {}),
    });
  }

  /**
   * Downloads layer file `hash` into `localDir` as `<as>.qcow2` (read-only to its owner
   * and group), resumable, verified before it gets its name: no more bytes than
   * `info.size`, hashing to `hash`, and a qcow2 header that names nothing but its parent
   * layer (lib/qcow2-header.ts). `as` is the layer a merged file stands in for (the name
   * the layers above use); by default the file's own. A layer that fails any of that
   * changes nothing local.
   */
  async pullLayer(domain: string, hash: string, info: LayerInfo, localDir: string, onProgress?: TransferProgress, as = hash): Promise<{ path: string; result: TransferResult }> {
    const path = join(localDir, layerFileName(as));
    if (await stat(path).catch(() => undefined)) return { path, result: { bytesMoved: 0, alreadyThere: true, resumedFrom: 0 } };
    await mkdirShared(localDir);
    const part = pullPartPath(localDir, hash);
    const result = await this.transport.getLayer(nasPaths.layer(domain, hash), hash, info.size, part, { onProgress });
    let problem: string | undefined;
    try {
      problem = layerHeaderProblem(parseQcow2Header(await readLayerHeader(part)), info.parent === null ? undefined : layerFileName(info.parent));
    } catch (error) {
      problem = (error as Error).message;
    }
    if (problem !== undefined) {
      await rm(part, { force: true });
      throw new IntegrityError(`layer ${hash} of ${domain} from ${this.transport.where} was refused: ${problem}`, {
        remedy: 'nothing local was changed; whatever wrote it to the NAS is not kvm-snapshot-sync: check who can write to the NAS, and push the VM again from the host that has it',
      });
    }
    await chmod(part, LAYER_MODE);
    try {
      await link(part, path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    await rm(part, { force: true });
    await fsyncDir(localDir);
    return { path, result };
  }

  /**
   * Changes the manifest: `change` gets the current manifest (or an empty one) and
   * returns the next; it may throw (a ConflictError) to refuse. Every layer the next
   * manifest adds must already be published. Two round trips: a read, and a
   * compare-and-swap under the NAS lock (lib/nas/nas-lock.ts) that writes only if the
   * manifest is still the one read; if another host changed it in between, `change`
   * runs again on what that host wrote.
   */
  async updateManifest(domain: string, change: (current: Manifest) => Manifest, { remove }: { remove?: (current: Manifest) => string[] } = {}): Promise<Manifest> {
    const lockPath = nasPaths.lock(domain);
    const waiter = new NasLockWaiter(this.transport, lockPath, {
      host: this.options.host,
      waitMs: this.options.lockWaitMs ?? 30_000,
      staleMs: this.options.lockStaleMs ?? 60_000,
      log: this.options.log,
    });
    for (let attempt = 1; ; attempt += 1) {
      const cached = this.lastSeen.get(domain);
      this.lastSeen.delete(domain);
      const read = cached ?? (await this.readManifestAndHash(domain));
      if (read.manifest === undefined) await this.checkMarker();
      const current = read.manifest ?? emptyManifest(domain);
      let changed: Manifest;
      let removing: string[] = [];
      try {
        removing = remove?.(current) ?? [];
        changed = change(structuredClone(current));
      } catch (error) {
        if (cached) continue; // maybe refused on an old picture: judge again on a fresh read
        throw error;
      }
      if (read.manifest !== undefined && removing.length === 0 && JSON.stringify(changed) === JSON.stringify(current)) {
        if (cached) continue; // nothing to change on an old picture: judge on a fresh read
        this.seen(domain, read);
        return current; // nothing to write
      }
      const next = { ...changed, format: NAS_FORMAT, revision: current.revision + 1 };
      // A file listed again (a layer pushed once more) is no longer one to remove.
      if (next.dropped) next.dropped = Object.fromEntries(Object.entries(next.dropped).filter(([hash]) => !Object.hasOwn(next.layers, hash)));
      const problem = manifestProblem(next);
      if (problem) throw new Error(`internal: refusing to write an invalid manifest: ${problem}`);
      const added = Object.keys(next.layers).filter((h) => !Object.hasOwn(current.layers, h));
      // A generation is listed only once its definition is on the NAS, like its layers.
      const definitions = Object.values(next.generations).flatMap((g) => (g.definition !== undefined && !Object.hasOwn(current.generations, g.id) ? [g.definition] : []));
      const data = serializeManifest(next);
      const result = await this.transport.replaceIfUnchanged(nasPaths.manifest(domain), data, {
        expectedSha256: read.sha256,
        required: [...added.map((hash) => nasPaths.layer(domain, hash)), ...[...new Set(definitions)].map((hash) => nasPaths.definition(domain, hash))],
        remove: removing,
        lock: lockClaim(lockPath, this.options.host, this.options.now?.()),
      });
      switch (result.outcome) {
        case 'replaced':
          this.options.log?.info('manifest updated', { domain, revision: next.revision, head: next.head ?? 'none' });
          this.seen(domain, { manifest: next, sha256: sha256Of(data) });
          return next;
        case 'missing':
          throw new IntegrityError(`${result.path} is not on the NAS; the manifest was not changed`, {
            remedy: 'push it first',
          });
        case 'locked':
          await waiter.busy(result);
          break;
        case 'changed':
          // Another host wrote between our read and our write: look again.
          if (attempt >= 20) throw new LockedError(`the manifest of ${domain} kept changing under us (${attempt} attempts)`, { remedy: 'try again in a moment' });
          this.options.log?.info('the manifest changed while we updated it; reading it again', { domain });
      }
    }
  }

  /**
   * Makes a new generation the head, if the head is still `generation.parent` (a
   * compare-and-swap): otherwise another host pushed first, and this fails with a
   * ConflictError that says who and when, having changed nothing.
   */
  async publishGeneration(domain: string, generation: NewGeneration, lease: LeaseChange = 'keep'): Promise<Generation> {
    const made: Omit<Generation, 'id'> = {
      parent: generation.parent,
      host: this.options.host,
      created: generation.created,
      disks: generation.disks,
      ...withDefinition(generation.definition),
    };
    const full: Generation = { id: generationId(made), ...made, ...(generation.checkpoint ? { checkpoint: true } : {}) };
    await this.updateManifest(domain, (manifest) => {
      if (manifest.head !== generation.parent) throw conflict(domain, manifest, generation.parent);
      // Only the host that runs the VM checkpoints it: one whose lease was taken runs on, cut off.
      if (generation.checkpoint && manifest.lease?.host !== this.options.host) {
        throw new LeaseHeldError(`${domain}: ${manifest.lease ? `host ${manifest.lease.host} took the VM (since ${manifest.lease.since})` : 'nobody holds the VM'}; this host's checkpoint was not published`, {
          remedy: 'the checkpoints stay here; the stop of the VM here keeps its session as a conflict to resolve (kss resolve)',
        });
      }
      manifest.layers = { ...manifest.layers, ...generation.layers };
      manifest.generations[full.id] = full;
      manifest.head = full.id;
      this.markHost(manifest, full.id);
      return this.changeLease(manifest, lease);
    });
    return full;
  }

  /**
   * Takes or gives back the lease. Taking it is a compare-and-swap on the head too: a
   * host takes the VM only in the state it has (`expectedHead`), never one it has not
   * seen. Giving it back leaves another host's lease alone.
   */
  async setLease(domain: string, change: Exclude<LeaseChange, 'keep'>, expectedHead: string | null): Promise<Manifest> {
    return this.updateManifest(domain, (manifest) => {
      if (change === 'take' && manifest.head !== expectedHead) throw conflict(domain, manifest, expectedHead);
      if (change === 'take' && expectedHead !== null) this.markHost(manifest, expectedHead);
      return this.changeLease(manifest, change);
    });
  }

  /**
   * Names a generation as a snapshot, kept by retention until deleted. A name already
   * taken by another generation is refused.
   */
  async addSnapshot(domain: string, name: string, generation: string): Promise<Manifest> {
    return this.updateManifest(domain, (manifest) => {
      const taken = manifest.snapshots?.[name];
      if (taken && taken.generation !== generation) throw new UsageError(`${domain} already has a snapshot ${name} (generation ${taken.generation.slice(0, 12)})`, { remedy: 'choose another name, or delete that one first' });
      if (!manifest.generations[generation]) throw new DiskStateError(`the NAS has no generation ${generation.slice(0, 12)} of ${domain}`);
      manifest.snapshots = { ...manifest.snapshots, [name]: { generation, host: this.options.host, created: this.now().toISOString() } };
      return manifest;
    });
  }

  /** Removes a snapshot's name; its generation is then kept or dropped by retention alone. */
  async removeSnapshot(domain: string, name: string): Promise<Manifest> {
    return this.updateManifest(domain, (manifest) => {
      if (!manifest.snapshots?.[name]) {
        throw new UsageError(`${domain} has no snapshot ${name}`, { remedy: `kss snapshot list ${domain} --remote lists them` });
      }
      const { [name]: _removed, ...rest } = manifest.snapshots;
      manifest.snapshots = rest;
      return manifest;
    });
  }

  private now(): Date {
    return this.options.now?.() ?? new Date();
  }

  /** Records that this host is in step with `generation` (what a catch-up for it starts from). */
  private markHost(manifest: Manifest, generation: string): void {
    manifest.hosts = { ...manifest.hosts, [this.options.host]: { generation, at: this.now().toISOString() } };
  }

  /**
   * Lists a merged layer, already published by pushLayer: it reads as layer `readsAs`,
   * standing on `info.parent`. Refused, changing nothing, when the manifest no longer
   * provides either of those (retention dropped them meanwhile). Returns whether it is listed.
   */
  async addMergedLayer(domain: string, hash: string, info: LayerInfo & { readsAs: string }): Promise<boolean> {
    let listed = false;
    await this.updateManifest(domain, (manifest) => {
      listed = Object.hasOwn(manifest.layers, hash) || (isProvided(manifest.layers, info.readsAs) && (info.parent === null || isProvided(manifest.layers, info.parent)));
      if (listed && !Object.hasOwn(manifest.layers, hash)) manifest.layers[hash] = info;
      return manifest;
    });
    return listed;
  }

  private changeLease(manifest: Manifest, change: LeaseChange): Manifest {
    if (change === 'take') manifest.lease = { host: this.options.host, since: this.now().toISOString() };
    if (change === 'release' && manifest.lease?.host === this.options.host) manifest.lease = null;
    return manifest;
  }

  private seen(domain: string, read: ReadManifest): ReadManifest {
    this.lastSeen.set(domain, read);
    return read;
  }

  /** Closes the transport's connection to the NAS. */
  close(): Promise<void> {
    return this.transport.close();
  }

  /** The definition as versions before NAS format 4 kept it (one per domain, the newest). */
  async readDomainXml(domain: string): Promise<string | undefined> {
    return (await this.transport.readFile(nasPaths.domainXml(domain), DOMAIN_XML_MAX_BYTES))?.toString('utf8');
  }

  /** Puts a portable definition on the NAS under its hash, unless it is there already (a published file is never rewritten, unless damaged). */
  async pushDefinition(domain: string, hash: string, xml: string): Promise<void> {
    if (sha256Of(xml) !== hash) throw new Error(`internal: the definition to push does not hash to ${hash}`);
    // One already there is left as it is, unless it is not what its name says (damaged): then it is put right.
    const there = await this.transport.readFile(nasPaths.definition(domain, hash), DOMAIN_XML_MAX_BYTES).catch(() => undefined);
    if (there !== undefined && sha256Of(there) === hash) return;
    await this.transport.writeFileAtomic(nasPaths.definition(domain, hash), Buffer.from(xml));
  }

  /** A portable definition from the NAS, verified against its hash; undefined when it is not there. */
  async readDefinition(domain: string, hash: string): Promise<string | undefined> {
    const data = await this.transport.readFile(nasPaths.definition(domain, hash), DOMAIN_XML_MAX_BYTES);
    if (data === undefined) return undefined;
    if (sha256Of(data) !== hash) {
      throw new IntegrityError(`${nasPaths.definition(domain, hash)} on the NAS does not hash to its name`, {
        remedy: 'nothing was used; the file was damaged or replaced on the NAS: the host that made that generation can push it again (kss push), or roll back past it',
      });
    }
    return data.toString('utf8');
  }

  /**
   * Applies retention (lib/nas/retention.ts), in three steps, each safe to be killed in
   * (the next pass finishes the work):
   *   retention:manifest  old generations, branches and unneeded layer files leave the
   *                       manifest; the files are noted in its `dropped` table, with the time
   *   retention:remove    under the NAS lock, in the compare-and-swap that takes them out
   *                       of the `dropped` table: the dropped files older than the grace
   *                       period, and the files no manifest named for as long (a push that
   *                       never published); then abandoned uploads after a week
   * A host in the middle of fetching a file that just left the manifest has the grace
   * period to finish. With `dryRun` it only says what it would drop and remove.
   */
  async collectGarbage(domain: string, policy: RetentionPolicy, { dryRun = false, onStep }: { dryRun?: boolean; onStep?: (step: string) => void } = {}): Promise<GcResult> {
    const now = this.now();
    let plan: RetentionPlan | undefined;
    const decide = (current: Manifest) => {
      plan = planRetention(current, now, policy);
      return applyRetention(current, plan, now);
    };
    onStep?.('retention:manifest');
    // A dry run decides on the manifest as it is, and changes nothing.
    const manifest = dryRun ? decide((await this.readManifest(domain)) ?? emptyManifest(domain)) : await this.updateManifest(domain, decide);
    const dropped = manifest.dropped ?? {};
    const layersDir = nasPaths.layersDir(domain);
    const listing = await this.transport.list(layersDir);
    onStep?.('retention:remove');
    const present = new Set<string>();
    const due: string[] = [];
    // Only files whose names this tool makes: anything else there is someone else's.
    for (const entry of listing) {
      const hash = hashOfLayerFileName(entry.name);
      if (hash !== undefined) present.add(hash);
      if (!entry.isFile || hash === undefined || Object.hasOwn(manifest.layers, hash)) continue;
      // Old enough both since it left the manifest and since it was written (it may have been published again).
      const since = Math.max(entry.mtimeMs, Object.hasOwn(dropped, hash) ? Date.parse(dropped[hash] as string) : -Infinity);
      if (now.getTime() - since >= GC_GRACE_MS && due.length < REMOVALS_PER_PASS) due.push(hash);
    }
    let removedLayers = dryRun ? due : [];
    const forgettable = Object.keys(dropped).some((hash) => !present.has(hash));
    if (!dryRun && (due.length > 0 || forgettable)) {
      // Under the NAS lock, on the manifest as it is then: a file some host listed again in
      // the meantime stays, and no host can name a file while it goes.
      await this.updateManifest(
        domain,
        (current) => {
          const gone = new Set(removedLayers);
          for (const hash of Object.keys(current.dropped ?? {})) if (gone.has(hash) || !present.has(hash)) delete current.dropped?.[hash];
          if (current.dropped && Object.keys(current.dropped).length === 0) delete current.dropped;
          return current;
        },
        {
          remove: (current) => {
            removedLayers = due.filter((hash) => !Object.hasOwn(current.layers, hash));
            return removedLayers.map((hash) => nasPaths.layer(domain, hash));
          },
        },
      );
    }
    for (const entry of await this.transport.list(nasPaths.uploadsDir(domain))) {
      if (!entry.isFile || !isUploadName(entry.name) || dryRun) continue;
      if (now.getTime() - entry.mtimeMs >= 7 * GC_GRACE_MS) await this.transport.remove(`${nasPaths.uploadsDir(domain)}/${entry.name}`);
    }
    if (!dryRun && (removedLayers.length > 0 || (plan?.dropGenerations.length ?? 0) > 0)) this.options.log?.info('retention applied', { domain, generations: plan?.dropGenerations.length ?? 0, dropped: plan?.dropLayers.length ?? 0, removed: removedLayers.length });
    return { droppedGenerations: plan?.dropGenerations ?? [], droppedBranches: plan?.dropBranches ?? [], droppedLayers: plan?.dropLayers ?? [], removedLayers };
  }

  /** The root's format marker: written on first use, and a newer format is refused. */
  private async checkMarker(): Promise<void> {
    if (this.markerChecked) return;
    const data = await this.transport.readFile(nasPaths.marker, MARKER_MAX_BYTES);
    if (data === undefined) {
      await this.transport.writeFileAtomic(nasPaths.marker, Buffer.from(`${JSON.stringify({ format: NAS_FORMAT })}\n`));
    } else {
      const format = (JSON.parse(data.toString('utf8')) as { format?: unknown }).format;
      if (typeof format !== 'number' || format > NAS_FORMAT) {
        throw new IntegrityError(`the NAS at ${this.transport.where} has format ${String(format)}; this version reads ${NAS_FORMAT}`, {
          remedy: 'upgrade kvm-snapshot-sync on this host',
        });
      }
    }
    this.markerChecked = true;
  }
}

function conflict(domain: string, manifest: Manifest, basedOn: string | null): ConflictError {
  const head = manifest.head === null ? undefined : manifest.generations[manifest.head];
  const moved = head ? `generation ${head.id.slice(0, 12)} from host ${head.host} at ${head.created}` : 'no generation';
  return new ConflictError(
    `the NAS moved on for ${domain}: its head is now ${moved}, but this push was based on ${basedOn === null ? 'nothing' : basedOn.slice(0, 12)}. Nothing was overwritten.`,
    { remedy: `choose which side to keep: kss resolve ${domain} --keep local|remote` },
  );
}
