// The hook lifecycle on real libvirtd (two simulated hosts, NAS over SSH behind the
// 1 Gbit link), against baselines measured in the same run:
//   a) what prepare adds to `virsh start` when the NAS is up to date, against the same
//      start with the hook absent (moved away, libvirtd told with SIGHUP);
//   b) `virsh destroy` with 2 GiB of random guest writes waiting to be pushed;
//   c) a start that pulls that 2 GiB layer first, against `ssh cat` of the same file.
// Environment: BENCH_RUNS (default 3; a) runs at least 9 times: its margin is small);
// BENCH_BASHRC (seconds the NAS account's ~/.bashrc takes in every SSH session, default
// 0.5: a NAS account that is not unusually light; 0: none); LIFECYCLE_PARTS (default
// "abc"; "a": the start only).
import { execFileSync } from 'node:child_process';
import { readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { readConfig } from '../lib/config.js';
import { DirTransport } from '../lib/nas/dir-transport.js';
import { NasRepository } from '../lib/nas/repository.js';
import { Logger } from '../lib/log.js';
import { shellJoin } from '../lib/shell-quote.js';
import { enableDisks } from '../lib/sync/enable.js';
import { nasPaths, type Manifest } from '../lib/nas/format.js';
import { createImage } from '../test/helpers/disks.js';
import { LibvirtHost, tinyDomainXml } from '../test/helpers/libvirt-host.js';
import { startLibvirtPair } from '../test/helpers/libvirt-pair.js';
import { median, printTable } from './stats.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 3);
const BASHRC = Number(process.env.BENCH_BASHRC ?? 0.5);
const PARTS = process.env.LIFECYCLE_PARTS ?? 'abc';
const IMAGES = '/var/lib/libvirt/images';
const CHUNK = 128 * 2 ** 20;

function seconds(work: () => void): number {
  const start = process.hrtime.bigint();
  work();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** Moves the hook away or back, and makes libvirtd notice (SIGHUP). */
function setHook(h: LibvirtHost, present: boolean): void {
  const hook = h.outside('/etc/libvirt/hooks/qemu');
  if (present) renameSync(`${hook}.off`, hook);
  else renameSync(hook, `${hook}.off`);
  execFileSync('kill', ['-HUP', readFileSync(h.outside('/run/libvirtd.pid'), 'utf8').trim()]);
  execFileSync('sleep', ['2']);
  for (let i = 0; i < 50 && h.virsh('version').status !== 0; i += 1) execFileSync('sleep', ['0.2']);
}

export async function benchLifecycle(): Promise<void> {
  const pair = await startLibvirtPair('kss-bench-life-');
  const { work, nas, desk, laptop } = pair;
  try {
    if (BASHRC > 0) nas.setShellStartup(`sleep ${BASHRC}\n`);
    const disks = { vda: `${IMAGES}/bench.qcow2` };
    createImage(desk.outside(disks.vda), 4 * 2 ** 30);
    const config = { ...(await readConfig(desk.outside('/etc/kvm-snapshot-sync/config.json'))), stateDir: desk.outside('/var/lib/kvm-snapshot-sync') };
    await enableDisks('bench', { vda: desk.outside(disks.vda) }, { config, log: new Logger([]) });
    desk.define('bench', tinyDomainXml('bench', disks, true));
    laptop.define('bench', tinyDomainXml('bench', disks, true));
    desk.mustVirsh('start', 'bench'); // the first push of the base
    desk.mustVirsh('destroy', 'bench');
    await desk.waitForStop('bench');

    // a) prepare's cost with the NAS in step.
    const withHook: number[] = [];
    const without: number[] = [];
    for (let run = 0; run < Math.max(RUNS, 9); run += 1) {
      withHook.push(seconds(() => desk.mustVirsh('start', 'bench')));
      desk.mustVirsh('destroy', 'bench');
      await desk.waitForStop('bench');
      setHook(desk, false);
      without.push(seconds(() => desk.mustVirsh('start', 'bench')));
      desk.mustVirsh('destroy', 'bench');
      setHook(desk, true);
    }

    if (process.env.BENCH_DEBUG) console.error(desk.hookLog('bench').split('\n').slice(-40).join('\n'));
    console.log(`\nLifecycle on real libvirtd, NAS over SSH on the 1 Gbit link, the NAS account's .bashrc ${BASHRC} s (medians)`);
    console.log(`a) virsh start, NAS in step, ${withHook.length} runs: with the hook ${median(withHook).toFixed(3)} s, hook absent ${median(without).toFixed(3)} s: prepare adds ${(median(withHook) - median(without)).toFixed(3)} s`);
    console.log(`   each run, with / without: ${withHook.map((w, i) => `${w.toFixed(2)}/${(without[i] as number).toFixed(2)}`).join(' ')}`);

    if (!PARTS.includes('b')) return;
    // b) and c): 2 GiB of random guest writes; destroy; then the other host pulls them.
    const random = desk.outside(`${IMAGES}/random.bin`);
    const destroys: number[] = [];
    const pulls: number[] = [];
    const raws: number[] = [];
    const ssh = shellJoin(['ssh', '-c', 'aes128-gcm@openssh.com', ...nas.sshArgs, '--', nas.target.host]);
    for (let run = 0; run < RUNS; run += 1) {
      desk.mustVirsh('start', 'bench');
      // 2 GiB of fresh random data, written by the guest in 128 MiB pieces.
      for (let offset = 0; offset < 2 ** 31; offset += CHUNK) {
        execFileSync('sh', ['-c', `head -c ${CHUNK} /dev/urandom > "$0" && chmod 644 "$0"`, random]);
        desk.guestIo('bench', `write -s ${IMAGES}/random.bin ${offset} ${CHUNK}`);
      }
      destroys.push(seconds(() => desk.mustVirsh('destroy', 'bench')));
      await desk.waitForStop('bench');

      execFileSync('sync'); // both the pull and the raw copy start with no dirty data
      pulls.push(seconds(() => laptop.mustVirsh('start', 'bench')));
      const root = nas.root;
      const manifest = (await new NasRepository(new DirTransport({ root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'bench' }).readManifest('bench')) as Manifest;
      const layer = nasPaths.layer('bench', manifest.generations[manifest.head as string]?.disks.vda as string);
      const size = statSync(join(root, layer)).size;
      if (size < 2 ** 31) {
        throw new Error(`the guest writes did not reach the disk (the new layer has ${size} bytes, not 2 GiB): b) and c) would be meaningless`);
      }
      execFileSync('sync');
      raws.push(seconds(() => execFileSync('sh', ['-c', `${ssh} 'cat ${shellJoin([join(root, layer)])}' > ${shellJoin([join(work, 'raw.bin')])}`])));
      if (process.env.BENCH_DEBUG) console.error(laptop.hookLog('bench').split('\n').slice(-14).join('\n'), desk.hookLog('bench').split('\n').filter((l) => l.includes('prepare')).slice(-12).join('\n'));
      console.error(`run ${run + 1}: layer ${(size / 2 ** 30).toFixed(2)} GiB, destroy ${destroys.at(-1)?.toFixed(2)} s, start with pull ${pulls.at(-1)?.toFixed(2)} s, raw ssh ${raws.at(-1)?.toFixed(2)} s`);
      laptop.mustVirsh('destroy', 'bench');
      await laptop.waitForStop('bench');
    }
    rmSync(random, { force: true });

    printTable(
      ['measure', 'median s', 'baseline s', 'result'],
      [
        ['b) virsh destroy with 2 GiB random to push', median(destroys).toFixed(3), '', ''],
        ['c) virsh start pulling 2 GiB random vs ssh cat', median(pulls).toFixed(2), median(raws).toFixed(2), `${(median(pulls) / median(raws)).toFixed(3)} × raw ssh`],
      ],
    );
  } finally {
    pair.stop();
  }
}
