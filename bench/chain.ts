// What a deep backing chain costs, to choose how deep a chain may grow (maxChainDepth):
//   a) random 4 KiB reads of a 1 GiB disk whose data is in the base, through chains of
//      1 to 64 layers, each layer holding a small day's delta (qemu-img bench, page
//      cache warm: the cost measured is QEMU walking the layers' metadata);
//   b) what merging layers costs locally: a safe rebase (lib/layers.ts mergeLayers)
//      of a layer holding 1 GiB of data, in MB/s.
// Environment: BENCH_RUNS (default 5).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { median, printTable } from './stats.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const DEPTHS = [1, 8, 16, 32, 64];
const GiB = 2 ** 30;

function qemuImg(...args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function qemuIo(image: string, ...commands: string[]): void {
  execFileSync('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), image], { stdio: 'ignore' });
}

function seconds(work: () => void): number {
  const start = process.hrtime.bigint();
  work();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** A chain of `depth` images: a written 1 GiB base, then layers of 16 scattered 64 KiB writes. */
function buildChain(dir: string, depth: number): string {
  let previous = join(dir, 'layer-0.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', previous, String(GiB));
  qemuIo(previous, `write -P 0x11 0 ${GiB}`);
  for (let i = 1; i < depth; i += 1) {
    const next = join(dir, `layer-${i}.qcow2`);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', previous, '-F', 'qcow2', next);
    qemuIo(next, ...Array.from({ length: 16 }, (_, k) => `write -P ${(i * 16 + k) % 250} ${((i * 7919 + k * 104729) % 16384) * 65536} 64k`));
    previous = next;
  }
  return previous;
}

export async function benchChain(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'kss-bench-chain-'));
  try {
    const tops = DEPTHS.map((depth) => {
      const dir = join(work, `d${depth}`);
      execFileSync('mkdir', ['-p', dir]);
      return buildChain(dir, depth);
    });
    // 20000 reads of 4 KiB, 8 in flight, stepping by a prime number of 4 KiB blocks (wraps).
    const bench = (top: string) => qemuImg('bench', '-q', '-f', 'qcow2', '-c', '20000', '-d', '8', '-s', '4096', '-S', String(4096 * 7919), top);
    const times = DEPTHS.map(() => [] as number[]);
    for (let run = 0; run < RUNS; run += 1) {
      for (const [i, top] of tops.entries()) (times[i] as number[]).push(seconds(() => bench(top)));
    }
    const base = median(times[0] as number[]);
    console.log(`\nBacking chain depth: 20000 random 4 KiB reads of data in the base (qemu-img bench), ${RUNS} runs, medians`);
    printTable(
      ['layers', 'median s', 'reads/s', '× 1 layer'],
      DEPTHS.map((depth, i) => {
        const t = median(times[i] as number[]);
        return [String(depth), t.toFixed(3), (20000 / t).toFixed(0), (t / base).toFixed(2)];
      }),
    );

    // b) a merge: a layer with 1 GiB of new data on a 1 GiB base, rebased onto nothing
    // below it but the base's parent is what mergeLayers does; here: onto an empty base.
    const dir = join(work, 'merge');
    execFileSync('mkdir', ['-p', dir]);
    qemuImg('create', '-q', '-f', 'qcow2', join(dir, 'empty.qcow2'), String(2 * GiB));
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'empty.qcow2', '-F', 'qcow2', join(dir, 'base.qcow2'));
    qemuIo(join(dir, 'base.qcow2'), `write -P 0x22 0 ${GiB}`);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', join(dir, 'delta.qcow2'));
    execFileSync('sh', ['-c', `head -c ${GiB} /dev/urandom > "$0"`, join(dir, 'random.bin')]);
    qemuIo(join(dir, 'delta.qcow2'), `write -s ${join(dir, 'random.bin')} ${GiB} ${GiB}`);
    const merges: number[] = [];
    for (let run = 0; run < Math.min(RUNS, 3); run += 1) {
      const out = join(dir, `merged-${run}.qcow2`);
      qemuImg('create', '-q', '-f', 'qcow2', '-b', 'delta.qcow2', '-F', 'qcow2', out);
      execFileSync('sync');
      merges.push(seconds(() => qemuImg('rebase', '-f', 'qcow2', '-b', 'empty.qcow2', '-F', 'qcow2', out)));
    }
    console.log(`\nMerging locally (safe rebase of 2 GiB of guest data, 1 GiB of it random, onto an empty image): median ${median(merges).toFixed(2)} s, ${((2 * GiB) / median(merges) / 1e6).toFixed(0)} MB/s`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
