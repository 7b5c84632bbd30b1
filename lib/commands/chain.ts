// `kss chain DISK` and `kss check DISK`: a disk image's backing chain, and a
// consistency check of every image in it.
import { resolve } from 'node:path';
import { IntegrityError } from '../errors.js';
import { checkImage, readChain } from '../layers.js';
import { printJson, type Output } from './output.js';

/** Prints a disk's backing chain, top first, with sizes. */
export async function showChain(options: { disk: string; json: boolean }, out: Output): Promise<void> {
  const chain = await readChain(resolve(options.disk));
  if (options.json) return printJson(out, chain);
  chain.forEach((entry, depth) => {
    const size = `${(entry.actualSize / 2 ** 20).toFixed(1)} MiB on disk`;
    out.stdout.write(`${String(depth).padStart(3)}  ${entry.format.padEnd(6)} ${size.padStart(18)}  ${entry.path}\n`);
  });
}

/** Checks every image of a disk's chain; fails when any is corrupt. */
export async function checkChain(options: { disk: string; json: boolean }, out: Output): Promise<void> {
  const chain = await readChain(resolve(options.disk));
  const reports = [];
  for (const entry of chain) {
    const report = entry.format === 'qcow2' ? await checkImage(resolve(entry.path)) : undefined;
    reports.push({ path: entry.path, ...report });
    if (!options.json) {
      const text = report
        ? `${report.corruptions} corruptions, ${report.leaks} leaked clusters, ${report.checkErrors} check errors`
        : `${entry.format}: nothing to check`;
      out.stdout.write(`${entry.path}: ${text}\n`);
    }
  }
  if (options.json) printJson(out, reports);
  const corrupt = reports.filter((report) => (report.corruptions ?? 0) > 0 || (report.checkErrors ?? 0) > 0);
  if (corrupt.length > 0) {
    throw new IntegrityError(`${corrupt.map((report) => report.path).join(', ')}: qemu-img check found corruption`, {
      remedy: 'restore the disk from the NAS (its layers are kept there); do not start the VM on this chain',
    });
  }
}
