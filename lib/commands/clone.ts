// `kss clone VM [--dir DIR]`: on the second machine, the domain from the NAS: its
// definition and its newest generation, ready for `virsh start`. The definition is
// checked (lib/definition-check.ts) before anything is pulled or created: anything that
// can write to the NAS can write it.
import { isAbsolute, normalize } from 'node:path';
import { readConfig } from '../config.js';
import { buildRefusal, checkDefinition, emulatorOf, formatDefinition, guestOf, planClone, summarizeDefinition } from '../definition-check.js';
import { splitDefinition } from '../definition.js';
import { copyElement, domainRecordOf, parseXmlTree, serializeXml, setDiskPaths, setEmulator } from '../domain-xml.js';
import { DiskStateError, IntegrityError, UsageError } from '../errors.js';
import { Logger, streamSink } from '../log.js';
import { openRepository } from '../nas/open.js';
import { cloneDisks } from '../sync/clone.js';
import { stateSourcesOf } from '../sync/state-volumes.js';
import { barProgress } from '../sync/disks.js';
import type { CommandContext } from './lifecycle.js';
import { defineDomain, isDefined, readHostFacts } from './libvirt-domain.js';

export async function cloneCommand(o: { domain: string; dir: string | undefined }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  if (o.dir !== undefined && !isAbsolute(o.dir)) throw new UsageError(`--dir ${o.dir} must be an absolute path`);
  const dir = o.dir === undefined ? undefined : normalize(o.dir);
  if (await isDefined(o.domain, context.env)) {
    throw new UsageError(`${o.domain} is already defined on this host`, { remedy: `virsh start ${o.domain} brings it up to date (kss pull ${o.domain} fetches ahead of time)` });
  }
  const log = new Logger([streamSink(context.stderr, 'info')]);
  const repository = openRepository(config, log);
  try {
    const manifest = await repository.readManifest(o.domain);
    if (!manifest?.head) throw new DiskStateError(`the NAS has nothing for ${o.domain}`, { remedy: `kss enable ${o.domain} on the host that has it` });
    const head = manifest.generations[manifest.head]!;
    // The generation's own definition; a NAS of generations made before definitions travelled has domain.xml.
    const nasXml = head.definition === undefined ? await repository.readDomainXml(o.domain) : await repository.readDefinition(o.domain, head.definition);
    if (nasXml === undefined) throw new DiskStateError(`the NAS has no definition of ${o.domain}`, { remedy: `kss push ${o.domain} on the host where it was enabled puts it there` });
    const definition = await prepareDefinition(nasXml, { name: o.domain, dir }, context.env);
    context.stdout.write(formatDefinition(definition.summary, definition.emulator));
    const sources = stateSourcesOf(domainRecordOf(definition.root), config.swtpmDir);
    const own = splitDefinition(definition.root, definition.nas, config).host;
    const cloned = await cloneDisks(o.domain, definition.request.disks, manifest, repository, { config, log, progressFor: barProgress(context.stderr) }, sources, { portable: nasXml, host: own });
    // The pull can take long: a domain of that name or UUID may have been defined meanwhile.
    const late = checkDefinition(definition.xml, definition.root, await readHostFacts(definition.guest, context.env), definition.request);
    if (late.length > 0) throw buildRefusal(o.domain, late, `; its disks were cloned (${Object.values(definition.request.disks).join(', ')}), nothing was defined`);
    await defineDomain(definition.xml, context.env);
    context.stdout.write(`${o.domain}: defined here with generation ${cloned.id.slice(0, 12)} from host ${cloned.host} (${cloned.created}); virsh start ${o.domain}\n`);
  } finally {
    await repository.close();
  }
}

/**
 * The definition from the NAS as it is to be defined here (its synced disks in `dir` when
 * given, this host's emulator), checked against this host; a refusal lists every problem.
 */
async function prepareDefinition(nasXml: string, asked: { name: string; dir: string | undefined }, env: NodeJS.ProcessEnv) {
  const nas = await parseXmlTree(nasXml).catch((error: unknown) => {
    throw new IntegrityError(`the definition of ${asked.name} on the NAS is refused; nothing was changed here: ${(error as Error).message}`, {
      remedy: `kss push ${asked.name} on the host that has it puts it there anew; if you did not put it there, someone else can write to the NAS: look at domains/${asked.name}/ there (manifest.json, definitions/)`,
    });
  });
  const request = planClone(nas, asked);
  const guest = guestOf(nas);
  const host = await readHostFacts(guest, env);
  const tree = copyElement(nas);
  if (asked.dir !== undefined) setDiskPaths(tree, request.disks);
  // The emulator belongs to the host, not to the VM: a definition made elsewhere names that
  // host's binary (/usr/libexec/qemu-kvm on Fedora, /usr/bin/qemu-system-x86_64 here), and
  // libvirt runs whatever path it names, as root. So the definition gets this host's own
  // emulator for its type, arch and machine (what virsh domcapabilities names), and the
  // printout says so; the check below refuses any other. Refusing instead would fail every
  // clone between two distributions and protect nothing more.
  // A portable definition (lib/definition.ts) names none: it gets this host's just the same.
  const nasEmulator = emulatorOf(nas);
  setEmulator(tree, host.emulator);
  const xml = serializeXml(tree);
  const root = await parseXmlTree(xml);
  // The checks of the text (a DTD, the encoding) are of what came from the NAS.
  const problems = checkDefinition(nasXml, root, host, request);
  if (problems.length > 0) throw buildRefusal(asked.name, problems, '; nothing was changed here');
  return { nas, xml, root, request, guest, summary: summarizeDefinition(root), emulator: { here: host.emulator, nas: nasEmulator } };
}
