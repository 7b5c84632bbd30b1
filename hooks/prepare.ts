// prepare begin: the only moment to change disk files before a start. Pulls or pushes
// what is needed, puts fresh tops on the newest generation and takes the lease; a
// refusal aborts the start with a message libvirt shows to the person.
import { syncedDisks } from '../lib/domain-xml.js';
import { openRepository } from '../lib/nas/open.js';
import { prepareStart } from '../lib/sync/start.js';
import { stateSourcesOf } from '../lib/sync/state-volumes.js';
import type { HookContext } from './dispatch.js';

/** Handles `prepare begin` for a managed domain. */
export async function prepareBegin({ domain, config, log }: HookContext): Promise<void> {
  const disks = Object.fromEntries(syncedDisks(domain).map((disk) => [disk.target, disk.path as string]));
  await prepareStart(domain.name, disks, { config, log, openRepository: () => openRepository(config, log) }, stateSourcesOf(domain, config.swtpmDir));
}
