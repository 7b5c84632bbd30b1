// `kss enable VM`, `kss disable VM` and `kss log VM`.
import { createReadStream, existsSync, watch } from 'node:fs';
import { readConfig } from '../config.js';
import { syncedDisks } from '../domain-xml.js';
import { DiskStateError, UsageError } from '../errors.js';
import { Logger, domainLogPath, streamSink } from '../log.js';
import { METADATA_ELEMENT, METADATA_PREFIX, NAMESPACE_URI } from '../namespace.js';
import { runCommand } from '../runner.js';
import { enableDisks } from '../sync/enable.js';
import { libvirtUri, virshCommand } from '../virsh.js';
import type { CommandContext } from './lifecycle.js';
import { definedDomain, requireShutOff } from './libvirt-domain.js';

/**
 * Takes a defined, shut-off domain under management: its qcow2 disks' current content
 * becomes the first generation (sealed beside each disk), the disk files become fresh
 * tops at the same paths, and the domain gets our metadata. The first start publishes it.
 */
export async function enableCommand(o: { domain: string }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const uri = libvirtUri(context.env);
  await requireShutOff(o.domain, context.env, `shut it down first: virsh shutdown ${o.domain}`);
  const disks = syncedDisks(await definedDomain(o.domain, context.env));
  if (disks.length === 0) throw new DiskStateError(`${o.domain} has no writable file disk to sync`);
  const raw = disks.filter((disk) => disk.format !== 'qcow2');
  if (raw.length > 0) {
    throw new DiskStateError(`${raw.map((d) => `${d.target} (${d.format ?? 'unknown format'})`).join(', ')}: only qcow2 disks can be enabled so far`, {
      remedy: 'convert the disk (qemu-img convert -O qcow2) and point the domain at the result, then enable again',
    });
  }
  const log = new Logger([streamSink(context.stderr, 'info')]);
  const generation = await enableDisks(o.domain, Object.fromEntries(disks.map((d) => [d.target, d.path as string])), { config, log });
  await runCommand(
    virshCommand(uri, 'metadata', o.domain, '--uri', NAMESPACE_URI, '--key', METADATA_PREFIX, '--set', `<${METADATA_ELEMENT}/>`, '--config'),
  );
  context.stdout.write(`${o.domain}: enabled, first generation ${generation.slice(0, 12)}; the next start publishes it\n`);
}

/** Prints the domain's hook and background log; with `follow`, keeps printing new lines. */
export async function logCommand(o: { domain: string; follow: boolean }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const file = domainLogPath(config.logDir, o.domain);
  if (!existsSync(file)) throw new UsageError(`no log for ${o.domain} yet (${file})`, { remedy: 'it appears after the first start or stop' });
  let offset = 0;
  const print = async () => {
    for await (const chunk of createReadStream(file, { start: offset })) {
      offset += (chunk as Buffer).length;
      context.stdout.write(chunk as Buffer);
    }
  };
  await print();
  if (!o.follow) return;
  await new Promise<never>(() => {
    watch(file, () => void print());
  });
}

/**
 * `kss disable VM`: takes a shut-off domain out of management on this host, losing
 * nothing (lib/sync/disable.ts), and removes our metadata from its definition.
 */
export async function disableCommand(o: { domain: string }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const uri = libvirtUri(context.env);
  await requireShutOff(o.domain, context.env, `shut it down first: kss stop ${o.domain}`);
  const log = new Logger([streamSink(context.stderr, 'warn')]);
  const { disableDomain } = await import('../sync/disable.js');
  const { openRepository } = await import('../nas/open.js');
  const done = await disableDomain(o.domain, { config, log, openRepository: () => openRepository(config, log) });
  await runCommand(virshCommand(uri, 'metadata', o.domain, '--uri', NAMESPACE_URI, '--remove', '--config'));
  context.stdout.write(
    `${o.domain}: no longer managed here; ${done.disks.join(', ') || 'no disk'} standalone again. The layers beside the disks (*.layers/) and the NAS copy are kept; remove them by hand when you no longer want them.\n`,
  );
  if (done.unpushed > 0) context.stderr.write(`kss: warning: ${done.unpushed} generation(s) never reached the NAS; they are in the disks, not on the NAS\n`);
}
