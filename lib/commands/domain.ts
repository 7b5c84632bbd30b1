// `kss enable VM`, `kss disable VM` and `kss log VM`.
import { createReadStream, existsSync, watch } from 'node:fs';
import { readConfig } from '../config.js';
import { domainRecordOf, parseXmlTree, serializeXml, setDiskFormatQcow2, syncedDisks } from '../domain-xml.js';
import { ConflictError, DiskStateError, LeaseHeldError, NasUnreachableError, UsageError } from '../errors.js';
import { Logger, domainLogPath, streamSink } from '../log.js';
import { METADATA_ELEMENT, METADATA_PREFIX, NAMESPACE_URI } from '../namespace.js';
import { runCommand } from '../runner.js';
import { enableDisks } from '../sync/enable.js';
import { stateSourcesOf } from '../sync/state-volumes.js';
import { libvirtUri, virshCommand } from '../virsh.js';
import { pushHere, shutOffSince, type CommandContext } from './lifecycle.js';
import { defineDomain, definitionXml } from './libvirt-domain.js';

/**
 * Takes a defined, shut-off domain under management: its disks' current content (qcow2
 * or raw) becomes the first generation (sealed beside each disk), the disk files become
 * fresh qcow2 tops at the same paths (a raw disk's driver type is switched), the domain
 * gets our metadata, and the definition and the base are pushed to the NAS.
 */
export async function enableCommand(o: { domain: string }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const uri = libvirtUri(context.env);
  const after = await shutOffSince(o.domain, context, `shut it down first: virsh shutdown ${o.domain}`);
  const xml = await definitionXml(o.domain, context.env);
  const tree = await parseXmlTree(xml);
  const record = domainRecordOf(tree);
  const disks = syncedDisks(record);
  if (disks.length === 0) throw new DiskStateError(`${o.domain} has no writable file disk to sync`);
  const other = disks.filter((disk) => disk.format !== undefined && disk.format !== 'qcow2' && disk.format !== 'raw');
  if (other.length > 0) {
    throw new DiskStateError(`${other.map((d) => `${d.target} (${d.format})`).join(', ')}: only qcow2 and raw disks can be enabled`, {
      remedy: 'convert the disk (qemu-img convert -O qcow2), point the domain at the result, and enable again',
    });
  }
  const log = new Logger([streamSink(context.stderr, 'info')]);
  const toEnable = Object.fromEntries(disks.map((d) => [d.target, { path: d.path as string, format: d.format === 'qcow2' ? ('qcow2' as const) : ('raw' as const) }]));
  const switchToQcow2 = (targets: string[]) => {
    setDiskFormatQcow2(tree, targets);
    return defineDomain(serializeXml(tree), context.env);
  };
  const enabled = await enableDisks(o.domain, toEnable, { config, log }, switchToQcow2, stateSourcesOf(record, config.swtpmDir));
  for (const dir of enabled.nocow) log.info('set NOCOW (btrfs) on the new layers directory', { dir });
  await runCommand(
    virshCommand(uri, 'metadata', o.domain, '--uri', NAMESPACE_URI, '--key', METADATA_PREFIX, '--set', `<${METADATA_ELEMENT}/>`, '--config'),
  );
  if (enabled.resumed) log.info('the first generation was made by an earlier run', { generation: enabled.generation });
  const pushed = await pushHere(o.domain, context, after);
  if (pushed.pending > 0) {
    const message = `${o.domain} is enabled here, but its first generation is not on the NAS: ${pushed.outcome}`;
    if (pushed.kept === 'conflict') {
      throw new ConflictError(message, {
        remedy: `the NAS already has a ${o.domain} of another history (enabled before, or on another host): keep this one with kss resolve ${o.domain} --keep local, or use the NAS's with kss resolve ${o.domain} --keep remote; either way the other is kept as a branch`,
      });
    }
    if (pushed.kept === 'lease-held-elsewhere') {
      throw new LeaseHeldError(message, {
        remedy: `the NAS already has a ${o.domain}, checked out by another host: shut it down there, then keep one of the two with kss resolve ${o.domain} --keep local or --keep remote`,
      });
    }
    throw new NasUnreachableError(message, { remedy: `kss push ${o.domain} once the NAS is reachable (the first start pushes it too)` });
  }
  // The push merged the first generation with the one the definition was captured in.
  context.stdout.write(`${o.domain}: enabled; generation ${(pushed.synced?.id ?? enabled.generation).slice(0, 12)} and the definition are on the NAS\n`);
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
  const after = await shutOffSince(o.domain, context, `shut it down first: kss stop ${o.domain}`);
  const log = new Logger([streamSink(context.stderr, 'warn')]);
  const { disableDomain } = await import('../sync/disable.js');
  const { openRepository } = await import('../nas/open.js');
  const done = await disableDomain(o.domain, { config, log, openRepository: () => openRepository(config, log) }, after);
  await runCommand(virshCommand(uri, 'metadata', o.domain, '--uri', NAMESPACE_URI, '--remove', '--config'));
  context.stdout.write(
    `${o.domain}: no longer managed here; ${done.disks.join(', ') || 'no disk'} standalone again. The layers beside the disks (*.layers/) and the NAS copy are kept; remove them by hand when you no longer want them.\n`,
  );
  if (done.unpushed > 0) context.stderr.write(`kss: warning: ${done.unpushed} generation(s) never reached the NAS; they are in the disks, not on the NAS\n`);
}
