// Shut down and go (issue 14): a session whose writes go to the NAS as checkpoints while
// the VM runs, against the same session without checkpoints, on real libvirtd (two
// simulated hosts, the NAS over SSH behind the 1 Gbit link), each run on a fresh domain:
//   - the guest writes 2 GiB of random data at a steady rate (32 MiB pieces, 30 % of them
//     rewriting an earlier piece), then `virsh destroy`; timed: destroy to `kss wait`
//     exiting 0 (what a person waits for before leaving with the laptop);
//   - the guest's write throughput while a checkpoint is pushed, as a ratio to the same
//     writes in the session without checkpoints;
//   - the bytes that went to the NAS in all (the link's counter, the first push of the
//     empty disk left out) ÷ the bytes the guest wrote;
//   - the link's speed: `ssh cat` of 512 MiB of random data into a NAS file, in each run.
// Environment: BENCH_RUNS (3), PRECOPY_SECONDS (how long the writes take, 120),
// PRECOPY_INTERVAL (checkpointSeconds, 20), PRECOPY_BASHRC (seconds the NAS account's
// ~/.bashrc takes in every SSH session, 0.5; 0: a plain account), PRECOPY_MODES (which
// sessions, "checkpoints,none"), BENCH_DEBUG (prints each stop's hook log).
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { readConfig } from '../lib/config.js';
import { Logger } from '../lib/log.js';
import { shellJoin } from '../lib/shell-quote.js';
import { enableDisks } from '../lib/sync/enable.js';
import { createImage } from '../test/helpers/disks.js';
import { type LibvirtHost, tinyDomainXml } from '../test/helpers/libvirt-host.js';
import { startLibvirtPair } from '../test/helpers/libvirt-pair.js';
import type { SshNas } from '../test/helpers/ssh-nas.js';
import { median, printTable } from './stats.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const MODES = (process.env.PRECOPY_MODES ?? 'checkpoints,none').split(',') as Mode[];
const WRITE_SECONDS = Number(process.env.PRECOPY_SECONDS ?? 120);
const INTERVAL = Number(process.env.PRECOPY_INTERVAL ?? 20);
const BASHRC = Number(process.env.PRECOPY_BASHRC ?? 0.5);
const IMAGES = '/var/lib/libvirt/images';
const PIECE = 32 * 2 ** 20;
const PIECES = 64; // 2 GiB
const RAW_BYTES = 512 * 2 ** 20;
/** The issue's day: 12 GB written evenly over 8 hours, checkpoints at the default 300 s. */
const DAY = { bytes: 12e9, seconds: 8 * 3600, interval: 300 };

type Mode = 'checkpoints' | 'none';

interface Run {
  mode: Mode;
  /** Destroy to `kss wait` exiting 0. */
  waitSeconds: number;
  /** Bytes on the link to the NAS between the destroy and the wait's end. */
  afterDestroyBytes: number;
  /** Bytes on the link to the NAS from the session's start to the wait's end. */
  allBytes: number;
  /** Each piece the guest wrote: when (ms since the epoch) and for how long. */
  writes: Array<{ start: number; end: number }>;
  /** The hook log's checkpoint work: freezes (and seals) and pushes, as [start, end] ms. */
  freezes: Array<[number, number]>;
  pushes: Array<[number, number]>;
  /** `ssh cat` into a NAS file, bytes per second. */
  wire: number;
}

/** Where the guest writes each piece: one after another, but the 3rd, 6th and 9th of every ten rewrite an earlier one (30 %). */
function pieceOffsets(count: number): number[] {
  const offsets: number[] = [];
  let fresh = 0;
  for (let i = 0; i < count; i += 1) {
    if ([2, 5, 8].includes(i % 10)) offsets.push(Math.floor(fresh / 2) * PIECE);
    else offsets.push(fresh++ * PIECE);
  }
  return offsets;
}

function sleep(ms: number): void {
  if (ms > 0) execFileSync('sleep', [(ms / 1000).toFixed(3)]);
}

function txBytes(nas: SshNas): number {
  return Number(readFileSync(`/sys/class/net/${nas.hostInterface}/statistics/tx_bytes`, 'utf8'));
}

function setConfig(host: LibvirtHost, values: Record<string, unknown>): void {
  const file = host.outside('/etc/kvm-snapshot-sync/config.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...values }, null, 2));
}

const time = (line: string) => Date.parse(line.slice(0, line.indexOf(' ')));

/** The checkpoint process's freezes and pushes, from its log lines. */
function checkpointWork(log: string): { freezes: Array<[number, number]>; pushes: Array<[number, number]> } {
  const freezes: Array<[number, number]> = [];
  const pushes: Array<[number, number]> = [];
  let pushFrom: number | undefined;
  for (const line of log.split('\n')) {
    const made = / INFO +checkpoint domain=\S+ .*? n=\d+ .*seconds=([\d.]+)/u.exec(line);
    if (made) {
      freezes.push([time(line) - Number(made[1]) * 1000, time(line)]);
      pushFrom = undefined;
    } else if (/ pushing layer /u.test(line) && freezes.length > 0 && pushFrom === undefined) pushFrom = time(line);
    else if (/ checkpoint pushed /u.test(line) && pushFrom !== undefined) {
      pushes.push([pushFrom, time(line)]);
      pushFrom = undefined;
    }
  }
  return { freezes, pushes };
}

async function session(desk: LibvirtHost, nas: SshNas, work: string, mode: Mode, run: number): Promise<Run> {
  const name = `pre-${mode === 'none' ? 'n' : 'c'}${run}`;
  const disk = `${IMAGES}/${name}.qcow2`;
  createImage(desk.outside(disk), 4 * 2 ** 30);
  const config = { ...(await readConfig(desk.outside('/etc/kvm-snapshot-sync/config.json'))), stateDir: desk.outside('/var/lib/kvm-snapshot-sync') };
  await enableDisks(name, { vda: desk.outside(disk) }, { config, log: new Logger([]) });
  desk.define(name, tinyDomainXml(name, { vda: disk }, true));
  setConfig(desk, { checkpointSeconds: mode === 'none' ? 0 : INTERVAL });
  desk.mustVirsh('start', name); // the first push of the empty disk
  desk.mustVirsh('destroy', name);
  await desk.waitForStop(name);

  const piece = desk.outside(`${IMAGES}/piece.bin`);
  const txStart = txBytes(nas);
  desk.mustVirsh('start', name);
  const began = Date.now();
  const writes: Run['writes'] = [];
  const offsets = pieceOffsets(PIECES);
  for (let i = 0; i < PIECES; i += 1) {
    execFileSync('sh', ['-c', `head -c ${PIECE} /dev/urandom > "$0" && chmod 644 "$0"`, piece]);
    sleep(began + (i * WRITE_SECONDS * 1000) / PIECES - Date.now());
    const start = Date.now();
    desk.guestIo(name, `write -s ${IMAGES}/piece.bin ${offsets[i]} ${PIECE}`);
    writes.push({ start, end: Date.now() });
  }
  const logBefore = desk.hookLog(name);
  const txDestroy = txBytes(nas);
  const destroyed = Date.now();
  desk.mustVirsh('destroy', name);
  const waited = desk.kss(['wait', name]);
  const waitSeconds = (Date.now() - destroyed) / 1000;
  if (waited.status !== 0) throw new Error(`kss wait ${name} exited ${waited.status}: ${waited.stderr}\n${desk.hookLog(name).split('\n').slice(-12).join('\n')}`);
  const txEnd = txBytes(nas);
  await desk.waitForStop(name);
  if (process.env.BENCH_DEBUG) console.error(desk.hookLog(name).slice(logBefore.length));

  execFileSync('sh', ['-c', `head -c ${RAW_BYTES} /dev/urandom > "$0"`, join(work, 'raw.bin')]);
  execFileSync('sync');
  const ssh = shellJoin(['ssh', '-c', 'aes128-gcm@openssh.com', ...nas.sshArgs, '--', nas.target.host]);
  const rawStart = Date.now();
  execFileSync('sh', ['-c', `${ssh} ${shellJoin([`cat > ${shellJoin([join(nas.root, 'raw.bin')])} && sync`])} < ${shellJoin([join(work, 'raw.bin')])}`]);
  const wire = RAW_BYTES / ((Date.now() - rawStart) / 1000);
  rmSync(join(nas.root, 'raw.bin'), { force: true });
  rmSync(piece, { force: true });

  const { freezes, pushes } = checkpointWork(logBefore);
  const result: Run = { mode, waitSeconds, afterDestroyBytes: txEnd - txDestroy, allBytes: txEnd - txStart, writes, freezes, pushes, wire };
  console.error(
    `${mode} run ${run + 1}: destroy → kss wait ${waitSeconds.toFixed(2)} s, ${(result.afterDestroyBytes / 2 ** 20).toFixed(0)} MiB after the destroy, ` +
      `${(result.allBytes / 2 ** 30).toFixed(2)} GiB in all; ${freezes.length} checkpoints; ssh cat ${(wire / 1e6).toFixed(0)} MB/s`,
  );
  return result;
}

const mbps = (w: { start: number; end: number }) => PIECE / 1e6 / ((w.end - w.start) / 1000);
const during = (w: { start: number; end: number }, spans: Array<[number, number]>) => spans.some(([from, to]) => w.start < to && w.end > from);

export async function benchPrecopy(): Promise<void> {
  const pair = await startLibvirtPair('kss-bench-pre-');
  const { work, nas, desk } = pair;
  try {
    if (BASHRC > 0) nas.setShellStartup(`sleep ${BASHRC}\n`);
    const runs: Run[] = [];
    for (let run = 0; run < RUNS; run += 1) for (const mode of MODES) runs.push(await session(desk, nas, work, mode, run));

    const of = (mode: Mode) => runs.filter((run) => run.mode === mode);
    const wire = median(runs.map((run) => run.wire));
    const written = PIECES * PIECE;
    const rows: string[][] = [];
    for (const mode of ['checkpoints', 'none'] as const) {
      const these = of(mode);
      const wait = median(these.map((run) => run.waitSeconds));
      const after = median(these.map((run) => run.afterDestroyBytes));
      const target = 5 + after / wire;
      rows.push([`destroy → kss wait, ${mode}`, `${wait.toFixed(2)} s`, `${(after / 2 ** 20).toFixed(0)} MiB left at the destroy: target ≤ 5 + ${(after / wire).toFixed(2)} s`, wait <= target ? 'met' : 'missed']);
    }
    const checkpointed = of('checkpoints');
    // What the stop costs beyond moving its bytes; the day leaves at most one interval's writes to it.
    const fixed = median(checkpointed.map((run) => run.waitSeconds - run.afterDestroyBytes / run.wire));
    const dayLeft = (DAY.bytes * DAY.interval) / DAY.seconds;
    const day = fixed + dayLeft / wire;
    rows.push(['12 GB day, default interval (extrapolated)', `${day.toFixed(2)} s`, `${fixed.toFixed(2)} s fixed + ${(dayLeft / 1e6).toFixed(0)} MB (one interval of the day) at ${(wire / 1e6).toFixed(0)} MB/s: target ≤ 15 s`, day <= 15 ? 'met' : 'missed']);
    const pushing = checkpointed.flatMap((run) => run.writes.filter((w) => during(w, run.pushes)).map(mbps));
    const freezing = checkpointed.flatMap((run) => run.writes.filter((w) => during(w, run.freezes)).map(mbps));
    const none = of('none').flatMap((run) => run.writes.map(mbps));
    const ratio = pushing.length > 0 ? median(pushing) / median(none) : Number.NaN;
    rows.push(['guest writes during a checkpoint push', `${median(pushing).toFixed(0)} MB/s`, `${pushing.length} pieces; ${median(none).toFixed(0)} MB/s without checkpoints: ${ratio.toFixed(2)} × (target ≥ 0.8)`, ratio >= 0.8 ? 'met' : 'missed']);
    if (freezing.length > 0) rows.push(['guest writes during a freeze', `${median(freezing).toFixed(0)} MB/s`, `${freezing.length} pieces: ${(median(freezing) / median(none)).toFixed(2)} ×`, '']);
    for (const mode of ['checkpoints', 'none'] as const) {
      const share = median(of(mode).map((run) => run.allBytes)) / written;
      rows.push([`to the NAS ÷ written, ${mode}`, `${share.toFixed(3)}`, `${(written / 2 ** 30).toFixed(0)} GiB written, 30 % rewrites${mode === 'checkpoints' ? ': target ≤ 1.3' : ''}`, mode === 'checkpoints' ? (share <= 1.3 ? 'met' : 'missed') : '']);
    }
    console.log(`\nShut down and go: ${RUNS} runs each, ${WRITE_SECONDS} s of writes, checkpointSeconds ${INTERVAL}, NAS account .bashrc ${BASHRC} s (medians)`);
    printTable(['measure', 'median', 'against', 'target'], rows);
  } finally {
    pair.stop();
  }
}
