// `kss clone VM [--dir DIR]`: on the second machine, the domain from the NAS: its
// definition and its newest generation, ready for `virsh start`.
import { basename, isAbsolute, join } from 'node:path';
import { readConfig } from '../config.js';
import { parseDomainXml, setDiskPaths, syncedDisks } from '../domain-xml.js';
import { DiskStateError, UsageError } from '../errors.js';
import { Logger, streamSink } from '../log.js';
import { openRepository } from '../nas/open.js';
import { cloneDisks } from '../sync/clone.js';
import { barProgress } from '../sync/disks.js';
import type { CommandContext } from './lifecycle.js';
import { defineDomain, isDefined } from './libvirt-domain.js';

export async function cloneCommand(o: { domain: string; dir: string | undefined }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  if (o.dir !== undefined && !isAbsolute(o.dir)) throw new UsageError(`--dir ${o.dir} must be an absolute path`);
  if (await isDefined(o.domain, context.env)) {
    throw new UsageError(`${o.domain} is already defined on this host`, { remedy: `virsh start ${o.domain} brings it up to date (kss pull ${o.domain} fetches ahead of time)` });
  }
  const log = new Logger([streamSink(context.stderr, 'info')]);
  const repository = openRepository(config, log);
  try {
    const manifest = await repository.readManifest(o.domain);
    if (!manifest?.head) throw new DiskStateError(`the NAS has nothing for ${o.domain}`, { remedy: `kss enable ${o.domain} on the host that has it` });
    let xml = await repository.readDomainXml(o.domain);
    if (xml === undefined) throw new DiskStateError(`the NAS has no definition of ${o.domain}`, { remedy: `kss push ${o.domain} on the host where it was enabled puts it there` });
    const disks = Object.fromEntries(syncedDisks(await parseDomainXml(xml)).map((d) => [d.target, o.dir === undefined ? (d.path as string) : join(o.dir, basename(d.path as string))]));
    if (o.dir !== undefined) xml = setDiskPaths(xml, disks);
    const head = await cloneDisks(o.domain, disks, manifest, repository, { config, log, progressFor: barProgress(context.stderr) });
    await defineDomain(xml, context.env);
    context.stdout.write(`${o.domain}: defined here with generation ${head.id.slice(0, 12)} from host ${head.host} (${head.created}); virsh start ${o.domain}\n`);
  } finally {
    await repository.close();
  }
}
