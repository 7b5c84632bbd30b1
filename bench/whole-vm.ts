// What the UEFI variables and the TPM state add (lib/sync/state-volumes.ts), on real
// libvirtd (two simulated hosts, NAS over SSH behind the 1 Gbit link): the same session
// on two domains with the same disk, one BIOS without a TPM (the baseline), one UEFI
// with an emulated TPM 2.0, each session writing 4 MiB to the disk and changing 4 KiB of
// the variables and a 6 KiB file of the TPM's. Measured from the hook's own log, so
// that libvirt's own work (swtpm, OVMF) does not count:
//   a) the stop's background work (seal, push) on the desktop;
//   b) prepare on the laptop, which pulls that session and puts the files in place;
//   c) prepare on the desktop with the NAS in step (the laptop changed nothing): the
//      start a person makes most often;
//   and the bytes each session's generation adds on the NAS.
// Environment: BENCH_RUNS (default 5).
import { closeSync, existsSync, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { DirTransport } from '../lib/nas/dir-transport.js';
import type { Manifest } from '../lib/nas/format.js';
import { NasRepository } from '../lib/nas/repository.js';
import { MiB, createImage } from '../test/helpers/disks.js';
import { firmwareDomainXml, tinyDomainXml } from '../test/helpers/libvirt-host.js';
import { startLibvirtPair } from '../test/helpers/libvirt-pair.js';
import { median, printTable } from './stats.js';

const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const IMAGES = '/var/lib/libvirt/images';
const DOMAINS = ['bios', 'uefi'] as const;

/** Milliseconds from the last line matching `from` to the first after it matching `to`, in a hook log. */
function span(log: string, from: RegExp, to: RegExp): number {
  const lines = log.split('\n');
  const start = lines.findLastIndex((line) => from.test(line));
  const end = lines.findIndex((line, i) => i > start && to.test(line));
  if (start < 0 || end < 0) throw new Error(`no ${from} … ${to} in the log:\n${lines.slice(-10).join('\n')}`);
  const at = (line: string) => Date.parse(line.slice(0, 24));
  return at(lines[end] as string) - at(lines[start] as string);
}

export async function benchWholeVm(): Promise<void> {
  const pair = await startLibvirtPair('kss-bench-whole-', { pool: true });
  const { nas, desk, laptop } = pair;
  try {
    for (const domain of DOMAINS) {
      const disks = { vda: `${IMAGES}/${domain}.qcow2` };
      createImage(desk.outside(disks.vda), 64 * MiB);
      desk.define(domain, domain === 'uefi' ? firmwareDomainXml(domain, disks, false) : tinyDomainXml(domain, disks, false));
    }
    // OVMF's first boot writes its variables; swtpm_setup makes the TPM.
    const nvram = '/var/lib/libvirt/qemu/nvram/uefi_VARS.fd';
    desk.mustVirsh('start', 'uefi');
    const template = readFileSync('/usr/share/OVMF/OVMF_VARS_4M.fd');
    for (const deadline = Date.now() + 180_000; !(existsSync(desk.outside(nvram)) && !readFileSync(desk.outside(nvram)).equals(template)); ) {
      if (Date.now() > deadline) throw new Error('OVMF did not write its variables');
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    desk.mustVirsh('destroy', 'uefi');
    const uuid = desk.mustVirsh('domuuid', 'uefi').trim();
    for (const domain of DOMAINS) {
      for (const [host, command] of [[desk, 'enable'], [laptop, 'clone']] as const) {
        const done = host.kss([command, domain]);
        if (done.status !== 0) throw new Error(`kss ${command} ${domain} on ${host.name}: ${done.stderr}`);
      }
    }

    const stops: Record<string, number[]> = { bios: [], uefi: [] };
    const prepares: Record<string, number[]> = { bios: [], uefi: [] };
    const inStep: Record<string, number[]> = { bios: [], uefi: [] };
    for (let run = 0; run < RUNS; run += 1) {
      for (const domain of DOMAINS) {
        desk.mustVirsh('start', '--paused', domain);
        if (run > 0) {
          const log = desk.hookLog(domain);
          if (!/decision=in-step/u.test(log.split('\n').findLast((line) => line.includes(' start ')) ?? '')) throw new Error(`the desktop's start of ${domain} was not in step:\n${log.split('\n').slice(-6).join('\n')}`);
          inStep[domain]?.push(span(log, /hook call domain=\S+ op=prepare\/begin/u, /hook call done domain=\S+ op=prepare\/begin/u));
        }
        desk.guestIo(domain, `write -P ${0x20 + run} 8M 4M`);
        if (domain === 'uefi') {
          const fd = openSync(desk.outside(nvram), 'r+');
          writeSync(fd, Buffer.alloc(4096, 0x40 + run), 0, 4096, 0x40000 + 4096 * run);
          closeSync(fd);
          writeFileSync(desk.outside(`/var/lib/libvirt/swtpm/${uuid}/tpm2/bench-state`), Buffer.alloc(6 * 1024, 0x60 + run));
        }
        desk.mustVirsh('destroy', domain);
        await desk.waitForStop(domain);
        stops[domain]?.push(span(desk.hookLog(domain), /hook call domain=\S+ op=release\/end/u, /stop finished/u));
        laptop.mustVirsh('start', '--paused', domain);
        prepares[domain]?.push(span(laptop.hookLog(domain), /hook call domain=\S+ op=prepare\/begin/u, /hook call done domain=\S+ op=prepare\/begin/u));
        laptop.mustVirsh('destroy', domain);
        await laptop.waitForStop(domain);
      }
      console.error(`run ${run + 1}: stop work bios ${stops.bios?.at(-1)} ms, uefi ${stops.uefi?.at(-1)} ms; prepare with pull bios ${prepares.bios?.at(-1)} ms, uefi ${prepares.uefi?.at(-1)} ms`);
    }

    const manifest = (await new NasRepository(new DirTransport({ root: nas.root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'bench' }).readManifest('uefi')) as Manifest;
    const sizes = (target: string, base: boolean) =>
      Object.values(manifest.generations)
        .map((generation) => generation.disks[target])
        .filter((layer, i, all): layer is string => layer !== undefined && all.indexOf(layer) === i)
        .map((layer) => manifest.layers[layer])
        .filter((info) => info !== undefined && (info.parent === null) === base)
        .map((info) => info!.size);
    const kib = (bytes: number) => `${(bytes / 1024).toFixed(0)} KiB`;
    console.log('\nUEFI variables and TPM state on real libvirtd, NAS over SSH on the 1 Gbit link (medians)');
    printTable(
      ['measure', 'UEFI + TPM', 'BIOS (baseline)', 'added'],
      [
        ...(
          [
            [`a) stop work (seal, push), ${RUNS} runs`, stops],
            [`b) prepare pulling the session, ${RUNS} runs`, prepares],
            [`c) prepare with the NAS in step, ${RUNS - 1} runs`, inStep],
          ] as const
        ).map(([label, times]) => {
          const [uefi, bios] = [median(times.uefi ?? []), median(times.bios ?? [])];
          return [label, `${uefi} ms`, `${bios} ms`, `${uefi - bios} ms (${(uefi / bios).toFixed(2)} ×)`];
        }),
      ],
    );
    printTable(
      ['on the NAS', 'base (at enable)', 'each session (median)'],
      (['@nvram', '@tpm'] as const).map((target) => [target, kib(median(sizes(target, true))), kib(median(sizes(target, false)))]),
    );
  } finally {
    pair.stop();
  }
}
