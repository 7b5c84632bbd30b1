// A year of daily use, fast (issue 12): one domain with a "/" disk and a "/home" disk,
// two simulated hosts (desk, laptop) and the NAS over SSH behind the 1 Gbit link, two
// sessions a day on a simulated clock (12 h a session, injected as SyncDeps.now into
// every call, so that retention by days sees a year). The lifecycle runs in this
// process through the functions the hook calls: prepare begin → prepareStart; release
// end → recordEvent, the `stopping` flag, then the background work finishStop, awaited
// here instead of detached. Between start and stop the "guest" writes offline with
// qemu-io: a hot region rewritten with a new pattern every session, and new data at
// new offsets. Hosts alternate, except that the laptop is away for a stretch in the
// second half; its return start is the catch-up measured.
//
// Measured against the targets of issue 12 (printed, never asserted: a benchmark):
//   1) NAS bytes ÷ live data          ≤ 2, plus what retention keeps by design
//   2) NAS head chain depth per disk  ≤ 16
//   3) local bytes ÷ live data        ≤ 2 on each host
//   4) catch-up: bytes pulled on return ÷ net change while away  ≤ 1.2
//   5) background work after stops: total, and per GB pushed
// and the content is checked: both hosts' disks read what the simulation wrote (a
// model of the last pattern at each 64 KiB cluster), and the returning host's disks
// equal the head right after its return start. A mismatch throws.
//
// The NAS's layer and upload files are aged with the simulated clock (their mtime set
// to the simulated time they first appeared): "manifest first, files later" judges a
// file's age by its mtime against the clock, and real mtimes would make a simulated
// year look like a few minutes.
//
// Environment: BENCH_YEAR_SESSIONS (300), BENCH_YEAR_AWAY (30 sessions),
// BENCH_YEAR_AWAY_AT (the session the absence starts at; default 60 % into the run),
// BENCH_YEAR_ROOT_MIB (64), BENCH_YEAR_HOME_MIB (256), BENCH_YEAR_HOT_MIB (4: /home's
// hot region; "/" gets a quarter of it), BENCH_YEAR_CONFIG (JSON merged into both
// hosts' configuration, e.g. '{"maxChainDepth":16}'), BENCH_KEEP=1 (keep the work
// directory: images, states, logs).
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { readConfig, type Config } from '../lib/config.js';
import { hashOfLayerFileName } from '../lib/file-names.js';
import { layersDirOf } from '../lib/layers.js';
import { Logger, domainLogPath, ensureLogDir, fileSink, type LogEntry } from '../lib/log.js';
import { DirTransport } from '../lib/nas/dir-transport.js';
import { canonicalChain, providers } from '../lib/nas/chains.js';
import { nasPaths, type Manifest } from '../lib/nas/format.js';
import { openTransport } from '../lib/nas/open.js';
import { NasRepository } from '../lib/nas/repository.js';
import { cloneDisks } from '../lib/sync/clone.js';
import type { SyncDeps } from '../lib/sync/deps.js';
import { enableDisks } from '../lib/sync/enable.js';
import { recordEvent, setFlag } from '../lib/sync/local-state.js';
import { prepareStart } from '../lib/sync/start.js';
import { finishStop } from '../lib/sync/stop.js';
import { startSshNas, type SshNas } from '../test/helpers/ssh-nas.js';
import { median, printTable } from './stats.js';

const MiB = 2 ** 20;
const KiB = 1024;
const GB = 1e9;
const HOUR = 3600_000;
/** The granularity of the content model (qcow2's default cluster): every write is aligned to it. */
const CLUSTER = 64 * KiB;
/** The simulated year starts here (a Monday, 08:00 UTC): fixed, so runs compare. */
const YEAR_START = Date.parse('2025-01-06T08:00:00Z');
const DOMAIN = 'year';
const TARGETS = { nasOverLive: 2, nasDepth: 16, localOverLive: 2, catchUp: 1.2 };

function envNumber(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0) throw new Error(`${name}=${text} is not a number`);
  return value;
}

/**
 * The depth of the NAS head's chain for disk `target`: the files a start reads from the
 * head generation's layer of that disk down to its base, merged layers standing in for
 * the layers they read as (lib/nas/chains.ts canonicalChain: the chain retention keeps).
 */
export function nasHeadDepth(manifest: Manifest, target: string): number {
  const head = manifest.head === null ? undefined : manifest.generations[manifest.head];
  const layer = head?.disks[target];
  return layer === undefined ? 0 : canonicalChain(manifest.layers, layer).length;
}

/**
 * What the NAS keeps on purpose, by the retention design (README "Retention"): for each
 * kept generation but the head, its own session layer per disk (the file that provides
 * it: every generation of the last week, a day's and a week's newest); the catch-up
 * layers kept for a host that is away; and the files that left the manifest and wait
 * out their day of grace. The target is NAS bytes ≤ 2 × live + this.
 */
function retainedBytes(manifest: Manifest, nasFiles: Map<string, number>): { bytes: number; generations: number; catchUps: number; grace: number } {
  const byName = providers(manifest.layers);
  const own = new Set<string>();
  for (const generation of Object.values(manifest.generations)) {
    if (generation.id === manifest.head) continue;
    for (const layer of Object.values(generation.disks)) {
      const file = byName.get(layer)?.[0];
      if (file !== undefined) own.add(file);
    }
  }
  let catchUps = 0;
  for (const info of Object.values(manifest.layers)) if (info.catchUpFor !== undefined) catchUps += info.size;
  let grace = 0;
  for (const hash of Object.keys(manifest.dropped ?? {})) grace += nasFiles.get(hash) ?? 0;
  const sessions = [...own].reduce((sum, file) => sum + (manifest.layers[file]?.size ?? 0), 0);
  return { bytes: sessions + catchUps + grace, generations: Object.keys(manifest.generations).length, catchUps, grace };
}

/** A clock that stands at a simulated time set by the run, and moves on in real time from there (times stay distinct). */
class SimulatedClock {
  private at = YEAR_START;
  private setAt = performance.now();
  set(time: number): void {
    this.at = time;
    this.setAt = performance.now();
  }
  readonly now = (): Date => new Date(this.at + (performance.now() - this.setAt));
}

interface DiskPlan {
  target: 'vda' | 'vdb';
  file: string;
  size: number;
  /** Written once before enable (the installed system, the first files). */
  base: number;
  /** Rewritten every session at the same offsets, a new pattern each time. */
  hot: number;
  /** New data per session, cycling through these sizes, at new offsets. */
  newSizes: number[];
}

/** Per disk, the pattern each 64 KiB cluster was last written with (0: never written, reads zeros). */
type Model = Record<string, Uint8Array>;

interface Write {
  offset: number;
  length: number;
  pattern: number;
}

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function formatMiB(bytes: number): string {
  return `${(bytes / MiB).toFixed(1)} MiB`;
}

function walkFiles(dir: string): Array<{ path: string; size: number; allocated: number }> {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names.flatMap((name) => {
    const path = join(dir, name);
    const s = statSync(path, { throwIfNoEntry: false });
    if (!s) return [];
    if (s.isDirectory()) return walkFiles(path);
    return s.isFile() ? [{ path, size: s.size, allocated: s.blocks * 512 }] : [];
  });
}

/** Guest data allocated in a disk's whole chain (qemu-img map: the data extents). */
function allocatedInChain(top: string): number {
  const map = JSON.parse(execFileSync('qemu-img', ['map', '--output=json', '-f', 'qcow2', top], { encoding: 'utf8', maxBuffer: 256 * MiB })) as Array<{ length: number; data: boolean }>;
  return map.reduce((sum, extent) => sum + (extent.data ? extent.length : 0), 0);
}

function qemuIoWrite(image: string, writes: Write[]): void {
  const commands = writes.flatMap((w) => ['-c', `write -P ${w.pattern} ${w.offset} ${w.length}`]);
  const out = execFileSync('qemu-io', ['-f', 'qcow2', ...commands, image], { encoding: 'utf8' });
  if (/error|failed/iu.test(out)) throw new Error(`qemu-io write on ${image}: ${out}`);
}

/** Checks that `image` reads exactly what the model says, run by run of equal clusters; throws where it does not. */
function verifyAgainstModel(image: string, clusters: Uint8Array, what: string): void {
  const commands: string[] = [];
  for (let start = 0; start < clusters.length; ) {
    let end = start + 1;
    while (end < clusters.length && clusters[end] === clusters[start]) end += 1;
    commands.push('-c', `read -P ${clusters[start]} ${start * CLUSTER} ${(end - start) * CLUSTER}`);
    start = end;
  }
  // qemu-io exits 1 when a pattern does not match: the lines that say where matter more.
  const run = spawnSync('qemu-io', ['-r', '-f', 'qcow2', ...commands, image], { encoding: 'utf8', maxBuffer: 64 * MiB });
  const bad = `${run.stdout}\n${run.stderr}`.split('\n').filter((line) => /Pattern verification failed|error|failed/iu.test(line));
  if (run.status !== 0 || bad.length > 0) {
    throw new Error(`CONTENT MISMATCH: ${what} (${image}) does not read what was written (qemu-io exit ${run.status}):\n${bad.slice(0, 10).join('\n')}`);
  }
}

class SimHost {
  readonly dir: string;
  readonly disks: Record<string, string>;
  config!: Config;
  log!: Logger;
  /** Entries logged during the current phase (what a phase moved, from its own words). */
  entries: LogEntry[] = [];

  constructor(
    readonly name: 'desk' | 'laptop',
    work: string,
    plans: DiskPlan[],
  ) {
    this.dir = join(work, name);
    const images = join(this.dir, 'images');
    mkdirSync(images, { recursive: true });
    this.disks = Object.fromEntries(plans.map((p) => [p.target, join(images, p.file)]));
  }

  async configure(nas: SshNas, extra: Record<string, unknown>): Promise<void> {
    const file = join(this.dir, 'config.json');
    writeFileSync(
      file,
      JSON.stringify({
        host: this.name,
        nas: `ssh://${nas.target.user}@${nas.target.host}:${nas.target.port}${nas.root}`,
        sshIdentity: nas.target.identity,
        sshKnownHosts: nas.target.knownHosts,
        stateDir: join(this.dir, 'state'),
        logDir: join(this.dir, 'log'),
        ...extra,
      }),
    );
    this.config = await readConfig(file);
    ensureLogDir(this.config.logDir);
    this.log = new Logger([fileSink(this.logFile(), 'info'), (entry) => this.entries.push(entry)]);
  }

  logFile(): string {
    return domainLogPath(this.config.logDir, DOMAIN);
  }

  /** The deps of one call, as the hook gives them (plus the simulated clock, everywhere). */
  deps(op: string, session: number | string, clock: SimulatedClock): SyncDeps {
    const log = this.log.with({ domain: DOMAIN, op, pid: process.pid, session });
    const config = this.config;
    return { config, log, now: clock.now, openRepository: () => new NasRepository(openTransport(config), { host: config.host, log, now: clock.now }) };
  }

  /** The sealed layer files this host keeps (name → bytes), over all disks. */
  layerFiles(): Map<string, number> {
    const files = new Map<string, number>();
    for (const top of Object.values(this.disks)) {
      for (const f of walkFiles(layersDirOf(top))) if (hashOfLayerFileName(basename(f.path)) !== undefined) files.set(f.path, f.size);
    }
    return files;
  }

  /** Bytes this host's disks take: each top and its layers directory, allocated. */
  localBytes(): number {
    return Object.values(this.disks).reduce(
      (sum, top) => sum + (statSync(top, { throwIfNoEntry: false })?.blocks ?? 0) * 512 + walkFiles(layersDirOf(top)).reduce((s, f) => s + f.allocated, 0),
      0,
    );
  }
}

export async function benchYear(): Promise<void> {
  const sessions = Math.floor(envNumber('BENCH_YEAR_SESSIONS', 300));
  const awayAt = Math.floor(envNumber('BENCH_YEAR_AWAY_AT', 2 * Math.ceil((sessions * 0.6) / 2)));
  const away = Math.min(Math.floor(envNumber('BENCH_YEAR_AWAY', 30)), sessions - awayAt - 1);
  if (sessions < 4 || awayAt < 2 || awayAt % 2 !== 0 || away < 1) {
    throw new Error(`BENCH_YEAR_SESSIONS=${sessions}, BENCH_YEAR_AWAY_AT=${awayAt}, BENCH_YEAR_AWAY=${away}: the absence must start at an even session ≥ 2 and end before the last`);
  }
  const hotHome = Math.max(1, Math.round(envNumber('BENCH_YEAR_HOT_MIB', 4) * 16)) * CLUSTER; // whole clusters
  const plans: DiskPlan[] = [
    { target: 'vda', file: 'year.qcow2', size: envNumber('BENCH_YEAR_ROOT_MIB', 64) * MiB, base: 16 * MiB, hot: Math.max(CLUSTER, Math.floor(hotHome / 4 / CLUSTER) * CLUSTER), newSizes: [64 * KiB, 128 * KiB, 64 * KiB, 192 * KiB] },
    { target: 'vdb', file: 'year-home.qcow2', size: envNumber('BENCH_YEAR_HOME_MIB', 256) * MiB, base: 32 * MiB, hot: hotHome, newSizes: [256 * KiB, 512 * KiB, 768 * KiB, 1024 * KiB] },
  ];
  for (const p of plans) {
    p.base = Math.min(p.base, Math.floor(p.size / 4 / CLUSTER) * CLUSTER);
    if (p.size % CLUSTER !== 0 || p.hot + p.base + Math.max(...p.newSizes) > p.size) throw new Error(`disk ${p.target}: ${p.size} bytes cannot hold its hot region, base and a session's new data`);
  }
  const extraConfig = process.env.BENCH_YEAR_CONFIG ? (JSON.parse(process.env.BENCH_YEAR_CONFIG) as Record<string, unknown>) : {};
  // Who runs each session: alternating, the laptop away for `away` sessions from `awayAt`.
  const schedule: Array<'desk' | 'laptop'> = [];
  for (let i = 0; i < sessions; i += 1) {
    if (i >= awayAt && i < awayAt + away) schedule.push('desk');
    else schedule.push(i === 0 ? 'desk' : schedule[i - 1] === 'desk' ? 'laptop' : 'desk');
  }
  const returnAt = awayAt + away; // the laptop's first session back
  if (schedule[awayAt - 1] !== 'laptop' || schedule[returnAt] !== 'laptop') throw new Error('internal: the schedule does not have the laptop leave and return');

  const work = mkdtempSync(join(tmpdir(), 'kss-bench-year-'));
  let nas: SshNas | undefined;
  const cleanup = () => {
    nas?.stop();
    nas = undefined;
  };
  const onSignal = (signal: NodeJS.Signals) => {
    cleanup();
    if (!process.env.BENCH_KEEP) rmSync(work, { recursive: true, force: true });
    process.kill(process.pid, signal);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  let failed = true;
  const hosts: SimHost[] = [];
  const t0 = process.hrtime.bigint();
  try {
    nas = await startSshNas();
    const clock = new SimulatedClock();
    const desk = new SimHost('desk', work, plans);
    const laptop = new SimHost('laptop', work, plans);
    hosts.push(desk, laptop);
    for (const h of hosts) await h.configure(nas, extraConfig);
    const byName = { desk, laptop };
    const nasDomainDir = join(nas.root, nasPaths.domainDir(DOMAIN));
    const nasFiles = () => [...walkFiles(join(nasDomainDir, 'layers')), ...walkFiles(join(nasDomainDir, 'uploads'))];
    const nasBytes = () => nasFiles().reduce((sum, f) => sum + f.size, 0);
    const nasLayerNames = () => new Map(walkFiles(join(nasDomainDir, 'layers')).map((f) => [f.path, f.size]));
    const reader = new NasRepository(new DirTransport({ root: nas.root, opTimeoutMs: 30_000, stallTimeoutMs: 30_000 }), { host: 'bench' });
    const readManifest = async () => {
      const manifest = await reader.readManifest(DOMAIN);
      if (!manifest?.head) throw new Error('the NAS has no head for the domain');
      return manifest;
    };
    // The NAS's files age with the simulated clock (see the top of this file).
    const aged = new Set<string>();
    const ageNasFiles = () => {
      const present = nasFiles();
      const time = clock.now();
      for (const f of present) {
        if (aged.has(f.path)) continue;
        utimesSync(f.path, time, time);
        aged.add(f.path);
      }
      const live = new Set(present.map((f) => f.path));
      for (const path of aged) if (!live.has(path)) aged.delete(path);
    };

    // The domain on the desk: the installed system and the first files, then enable.
    const model: Model = {};
    const cursor: Record<string, number> = {};
    for (const p of plans) {
      const clusters = new Uint8Array(p.size / CLUSTER);
      execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', desk.disks[p.target] as string, String(p.size)]);
      qemuIoWrite(desk.disks[p.target] as string, [{ offset: 0, length: p.hot + p.base, pattern: 1 }]);
      clusters.fill(1, 0, (p.hot + p.base) / CLUSTER);
      model[p.target] = clusters;
      cursor[p.target] = p.hot + p.base;
    }
    const snapshot = (m: Model): Model => Object.fromEntries(Object.entries(m).map(([t, c]) => [t, c.slice()]));
    clock.set(YEAR_START - HOUR);
    await enableDisks(DOMAIN, desk.disks, desk.deps('kss-enable', 'enable', clock));
    const setupSeconds = seconds(t0);

    // What each host's disks should read: the model when that host last stopped.
    const expectedOn: Partial<Record<'desk' | 'laptop', Model>> = {};
    const rows: Array<{ i: number; host: string; startS: number; writeS: number; stopS: number; pulled: number; pushed: number; nas: number; depth: Record<string, number>; local: Record<string, number>; live: number; retained: number }> = [];
    let cloneSeconds = 0;
    let laptopLeft: Model | undefined; // the model when the laptop last stopped before its absence
    const writtenAway: Record<string, Set<number>> = Object.fromEntries(plans.map((p) => [p.target, new Set<number>()]));
    let catchUp: { files: number; logged: number; layers: number; seconds: number; union: number; differ: number } | undefined;
    const liveOfModel = () => Object.values(model).reduce((sum, c) => sum + c.reduce((n, v) => n + (v !== 0 ? 1 : 0), 0) * CLUSTER, 0);
    let headBefore: string | null = null;
    const tSessions = process.hrtime.bigint();

    for (let i = 0; i < sessions; i += 1) {
      const host = byName[schedule[i] as 'desk' | 'laptop'];
      const sessionAt = YEAR_START + i * 12 * HOUR;
      if (host === laptop && expectedOn.laptop === undefined) {
        // The laptop gets the VM the way `kss clone --dir` does it: the head's layers, fresh tops.
        clock.set(sessionAt - HOUR);
        const t = process.hrtime.bigint();
        const deps = laptop.deps('kss-clone', 'clone', clock);
        const repository = deps.openRepository();
        try {
          const manifest = await repository.readManifest(DOMAIN);
          if (!manifest) throw new Error('the NAS has nothing to clone');
          await cloneDisks(DOMAIN, laptop.disks, manifest, repository, deps);
        } finally {
          await repository.close();
        }
        cloneSeconds = seconds(t);
        expectedOn.laptop = snapshot(model);
      }

      // prepare begin
      clock.set(sessionAt);
      const layersBefore = host.layerFiles();
      host.entries = [];
      let t = process.hrtime.bigint();
      await prepareStart(DOMAIN, host.disks, host.deps('prepare/begin', i, clock));
      const startS = seconds(t);
      const newLocal = [...host.layerFiles()].filter(([path]) => !layersBefore.has(path));
      const pulled = newLocal.reduce((sum, [, size]) => sum + size, 0);
      if (i === returnAt) {
        const logged = host.entries.filter((e) => e.message === 'pulling layer').reduce((sum, e) => sum + Number(e.fields.bytes ?? 0), 0);
        let union = 0;
        let differ = 0;
        for (const p of plans) {
          union += (writtenAway[p.target] as Set<number>).size * CLUSTER;
          const before = (laptopLeft as Model)[p.target] as Uint8Array;
          differ += (model[p.target] as Uint8Array).reduce((n, v, k) => n + (v !== before[k] ? 1 : 0), 0) * CLUSTER;
          // Right after its return start, the laptop's disks are the head.
          verifyAgainstModel(laptop.disks[p.target] as string, model[p.target] as Uint8Array, `the laptop's ${p.target} after its return start`);
        }
        catchUp = { files: pulled, logged, layers: newLocal.length, seconds: startS, union, differ };
      }

      // The guest's day, offline: the hot region anew, and new data, on both disks.
      t = process.hrtime.bigint();
      const pattern = 2 + (i % 250);
      for (const p of plans) {
        const length = p.newSizes[i % p.newSizes.length] as number;
        if ((cursor[p.target] as number) + length > p.size) cursor[p.target] = p.hot; // the disk is full: new data over old
        const writes: Write[] = [
          { offset: 0, length: p.hot, pattern },
          { offset: cursor[p.target] as number, length, pattern },
        ];
        cursor[p.target] = (cursor[p.target] as number) + length;
        qemuIoWrite(host.disks[p.target] as string, writes);
        const clusters = model[p.target] as Uint8Array;
        for (const w of writes) {
          clusters.fill(pattern, w.offset / CLUSTER, (w.offset + w.length) / CLUSTER);
          if (i >= awayAt && i < returnAt) for (let k = w.offset / CLUSTER; k < (w.offset + w.length) / CLUSTER; k += 1) writtenAway[p.target]?.add(k);
        }
      }
      const writeS = seconds(t);

      // release end, then its background work (detached by the hook; awaited here).
      clock.set(sessionAt + 6 * HOUR);
      const stopDeps = host.deps('release/end', i, clock);
      const stop = await recordEvent(host.config.stateDir, DOMAIN, 'stop', clock.now());
      await setFlag(host.config.stateDir, DOMAIN, 'stopping', stop.id);
      const nasBefore = nasLayerNames();
      t = process.hrtime.bigint();
      const result = await finishStop(DOMAIN, { ...stopDeps, log: stopDeps.log.with({ op: 'kss-finish-stop/begin' }) }, stop.id);
      const stopS = seconds(t);
      const manifest = await readManifest();
      const head = manifest.generations[manifest.head as string];
      if (result.superseded || result.kept !== undefined || head?.host !== host.name || manifest.head === headBefore) {
        throw new Error(`session ${i} on ${host.name}: the work after the stop did not make a new NAS head (${JSON.stringify(result)})`);
      }
      headBefore = manifest.head;
      const pushed = [...nasLayerNames()].filter(([path]) => !nasBefore.has(path)).reduce((sum, [, size]) => sum + size, 0);
      ageNasFiles();
      expectedOn[host.name] = snapshot(model);
      if (host === laptop && i === awayAt - 1) laptopLeft = snapshot(model);

      const depth = Object.fromEntries(plans.map((p) => [p.target, nasHeadDepth(manifest, p.target)]));
      const config = host.config;
      rows.push({
        i,
        host: host.name,
        startS,
        writeS,
        stopS,
        pulled,
        pushed,
        nas: nasBytes(),
        depth,
        local: { desk: desk.localBytes(), laptop: laptop.localBytes() },
        live: liveOfModel(),
        retained: retainedBytes(manifest, new Map(walkFiles(join(nasDomainDir, 'layers')).map((f) => [basename(f.path, '.qcow2'), f.size]))).bytes,
      });
      const row = rows.at(-1) as (typeof rows)[number];
      if (i % 10 === 0 || i === sessions - 1 || i === returnAt) {
        console.error(
          `session ${i + 1}/${sessions} ${clock.now().toISOString().slice(0, 10)} ${host.name}: start ${startS.toFixed(2)} s (pulled ${formatMiB(pulled)}), write ${writeS.toFixed(2)} s, stop ${stopS.toFixed(2)} s (pushed ${formatMiB(pushed)}); NAS ${formatMiB(row.nas)}, head depth ${Object.values(depth).join('/')}, local ${formatMiB(row.local.desk as number)}/${formatMiB(row.local.laptop as number)}`,
        );
      }
    }
    const sessionsSeconds = seconds(tSessions);

    // Content: each host reads what it had when it last stopped.
    const tVerify = process.hrtime.bigint();
    for (const h of hosts) {
      for (const p of plans) verifyAgainstModel(h.disks[p.target] as string, (expectedOn[h.name] as Model)[p.target] as Uint8Array, `${h.name}'s ${p.target} at the end`);
    }
    // Live data: what the head's chains hold (the host of the last session sits on the head).
    const last = byName[schedule[sessions - 1] as 'desk' | 'laptop'];
    const liveByDisk = Object.fromEntries(plans.map((p) => [p.target, allocatedInChain(last.disks[p.target] as string)]));
    const live = Object.values(liveByDisk).reduce((a, b) => a + b, 0);
    const verifySeconds = seconds(tVerify);
    const final = rows.at(-1) as (typeof rows)[number];
    const manifest = await readManifest();
    await reader.close();

    // The figures.
    const ratio = (a: number, b: number) => (b > 0 ? a / b : Number.NaN);
    const secondHalf = rows.slice(Math.floor(rows.length / 2));
    const maxOf = (values: number[]) => Math.max(...values);
    const stopTotal = rows.reduce((s, r) => s + r.stopS, 0);
    const pushedTotal = rows.reduce((s, r) => s + r.pushed, 0);
    const firstDay = new Date(YEAR_START).toISOString().slice(0, 10);
    const lastDay = new Date(YEAR_START + (sessions - 1) * 12 * HOUR).toISOString().slice(0, 10);
    console.log(`\nA year of use: ${sessions} sessions, two a day (${sessions / 2} days, ${firstDay} to ${lastDay}; a full year is 730), laptop away for sessions ${awayAt + 1}-${returnAt} (${away}), NAS over SSH on the 1 Gbit link`);
    console.log(
      `disks: ${plans.map((p) => `${p.target} ${formatMiB(p.size)} (hot ${formatMiB(p.hot)}, new ${p.newSizes.map((s) => s / KiB).join('/')} KiB a session)`).join(', ')}; maxChainDepth ${desk.config.maxChainDepth}, nasChainDepth ${desk.config.nasChainDepth}, retention: all of ${desk.config.retentionDays} days, daily to ${desk.config.retentionDailyDays}, weekly to ${desk.config.retentionWeeklyDays}, the nearest ${desk.config.retentionGenerations}`,
    );
    console.log(`live data in the head: ${formatMiB(live)} (${plans.map((p) => `${p.target} ${formatMiB(liveByDisk[p.target] as number)}`).join(', ')}; the model says ${formatMiB(final.live)})`);
    console.log(`NAS: ${Object.keys(manifest.generations).length} generations, ${Object.keys(manifest.layers).length} layers in the manifest, ${nasFiles().length} files`);
    printTable(
      ['measure', 'at the end', 'max, 2nd half', 'target'],
      [
        ['NAS bytes ÷ live', ratio(final.nas, live).toFixed(2), maxOf(secondHalf.map((r) => ratio(r.nas, r.live))).toFixed(2), `≤ ${TARGETS.nasOverLive} + retained`],
        ['  retained by design ÷ live', ratio(final.retained, live).toFixed(2), maxOf(secondHalf.map((r) => ratio(r.retained, r.live))).toFixed(2), ''],
        ...plans.map((p) => [`NAS head depth ${p.target}`, String(final.depth[p.target]), String(maxOf(secondHalf.map((r) => r.depth[p.target] as number))), `≤ ${TARGETS.nasDepth}`]),
        ...hosts.map((h) => [`local bytes ÷ live, ${h.name}`, ratio(final.local[h.name] as number, live).toFixed(2), maxOf(secondHalf.map((r) => ratio(r.local[h.name] as number, r.live))).toFixed(2), `≤ ${TARGETS.localOverLive}`]),
        ['catch-up ÷ net change', catchUp ? ratio(catchUp.files, catchUp.differ).toFixed(2) : 'n/a', '', `≤ ${TARGETS.catchUp}`],
      ],
    );
    const verdict = (ok: boolean) => (ok ? 'meets the target' : 'MISSES the target');
    // After every session, not only at the end: the NAS against its budget, each host against 2 × live.
    const worst = (score: (r: (typeof rows)[number]) => number) => rows.reduce((best, r) => (score(r) > score(best) ? r : best), rows[0] as (typeof rows)[number]);
    const nasWorst = worst((r) => r.nas / (TARGETS.nasOverLive * r.live + r.retained));
    console.log(`worst after any session: NAS ${formatMiB(nasWorst.nas)} against 2 × live + retained = ${formatMiB(TARGETS.nasOverLive * nasWorst.live + nasWorst.retained)} (session ${nasWorst.i + 1}, ${(nasWorst.nas / (TARGETS.nasOverLive * nasWorst.live + nasWorst.retained)).toFixed(2)} of the budget)`);
    for (const h of hosts) {
      const r = worst((row) => (row.local[h.name] ?? 0) / row.live);
      console.log(`worst after any session: local bytes ${h.name} ${formatMiB(r.local[h.name] as number)} = ${((r.local[h.name] as number) / r.live).toFixed(2)} × live (session ${r.i + 1})`);
    }
    const nasLimit = TARGETS.nasOverLive * live + final.retained;
    console.log(`\n1) NAS bytes ${formatMiB(final.nas)} = ${ratio(final.nas, live).toFixed(2)} × live; target ≤ ${TARGETS.nasOverLive} × live + retained by design (${formatMiB(final.retained)}) = ${formatMiB(nasLimit)}: ${verdict(final.nas <= nasLimit)}`);
    for (const p of plans) console.log(`2) NAS head chain depth ${p.target}: ${final.depth[p.target]} layers; target ≤ ${TARGETS.nasDepth}: ${verdict((final.depth[p.target] as number) <= TARGETS.nasDepth)}`);
    for (const h of hosts) {
      const bytes = final.local[h.name] as number;
      console.log(`3) local bytes ${h.name}: ${formatMiB(bytes)} = ${ratio(bytes, live).toFixed(2)} × live; target ≤ ${TARGETS.localOverLive} × live: ${verdict(bytes <= TARGETS.localOverLive * live)}`);
    }
    if (catchUp) {
      const logNote = catchUp.logged !== catchUp.files ? ` (its log says ${formatMiB(catchUp.logged)})` : '';
      const unionNote = catchUp.union !== catchUp.differ ? `, written ${formatMiB(catchUp.union)}` : '';
      console.log(
        `4) catch-up after ${away} sessions away: pulled ${formatMiB(catchUp.files)} in ${catchUp.layers} layer files${logNote} in ${catchUp.seconds.toFixed(2)} s, net change ${formatMiB(catchUp.differ)}${unionNote} = ${ratio(catchUp.files, catchUp.differ).toFixed(2)} × net change; target ≤ ${TARGETS.catchUp}: ${verdict(catchUp.files <= TARGETS.catchUp * catchUp.differ)}`,
      );
    }
    console.log(`5) background work after stops: ${stopTotal.toFixed(1)} s in all (median ${median(rows.map((r) => r.stopS)).toFixed(2)} s, max ${maxOf(rows.map((r) => r.stopS)).toFixed(2)} s) for ${formatMiB(pushedTotal)} pushed: ${(stopTotal / (pushedTotal / GB)).toFixed(1)} s per GB pushed`);

    // The NAS upkeep (merged and catch-up layers, retention) as the hosts' logs time it:
    // from each "stop finished" to the next "NAS upkeep finished".
    let upkeepSeconds = 0;
    let mergedBytes = 0;
    for (const h of hosts) {
      let stoppedAt: number | undefined;
      for (const line of readFileSync(h.logFile(), 'utf8').split('\n')) {
        const at = Date.parse(line.slice(0, 24));
        if (line.includes(' stop finished')) stoppedAt = at;
        if (line.includes(' NAS upkeep finished') && stoppedAt !== undefined) {
          upkeepSeconds += (at - stoppedAt) / 1000;
          stoppedAt = undefined;
        }
        if (/ publishing a (merged|catch-up) layer /u.test(line)) mergedBytes += Number(/ bytes=(\d+)/u.exec(line)?.[1] ?? 0);
      }
    }
    console.log(`   of which the NAS upkeep after the push: ${upkeepSeconds.toFixed(1)} s for ${formatMiB(mergedBytes)} of merged and catch-up layers built and published: ${mergedBytes > 0 ? (upkeepSeconds / (mergedBytes / GB)).toFixed(1) : 'n/a'} s per GB`);

    const pullStarts = rows.filter((r) => r.pulled > 0);
    const inStep = rows.filter((r) => r.pulled === 0);
    const totalSeconds = seconds(t0);
    console.log('\nTimings of the run');
    printTable(
      ['phase', 'total s', 'median s', 'count'],
      [
        ['setup (NAS, images, enable)', setupSeconds.toFixed(1), '', '1'],
        ['clone on the laptop', cloneSeconds.toFixed(2), '', '1'],
        ['starts that pulled', pullStarts.reduce((s, r) => s + r.startS, 0).toFixed(1), pullStarts.length > 0 ? median(pullStarts.map((r) => r.startS)).toFixed(2) : '', String(pullStarts.length)],
        ['starts in step', inStep.reduce((s, r) => s + r.startS, 0).toFixed(1), inStep.length > 0 ? median(inStep.map((r) => r.startS)).toFixed(2) : '', String(inStep.length)],
        ['guest writes (qemu-io)', rows.reduce((s, r) => s + r.writeS, 0).toFixed(1), median(rows.map((r) => r.writeS)).toFixed(2), String(rows.length)],
        ['work after stops (finishStop)', stopTotal.toFixed(1), median(rows.map((r) => r.stopS)).toFixed(2), String(rows.length)],
        ['sessions, with measuring', sessionsSeconds.toFixed(1), '', String(sessions)],
        ['content check, live data', verifySeconds.toFixed(1), '', '1'],
        ['whole run', totalSeconds.toFixed(1), '', ''],
      ],
    );
    failed = false;
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    cleanup();
    if (failed && !process.env.BENCH_KEEP) {
      const kept = mkdtempSync(join(tmpdir(), 'kss-bench-year-logs-'));
      for (const h of hosts) {
        if (h.config !== undefined) cpSync(h.logFile(), join(kept, `${h.name}.log`), { force: true, errorOnExist: false });
      }
      console.error(`the hosts' logs are kept in ${kept}`);
    }
    if (process.env.BENCH_KEEP) console.error(`kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
  }
}
