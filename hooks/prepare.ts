// prepare begin: the only moment to change disk files before a start. Pulls or pushes
// what is needed, puts fresh tops on the newest generation and takes the lease; a
// refusal aborts the start with a message libvirt shows to the person. A start refused
// for a definition that changed elsewhere has it put in place in the background.
import { syncedDisks } from '../lib/domain-xml.js';
import { openRepository } from '../lib/nas/open.js';
import { prepareStart } from '../lib/sync/start.js';
import { stateSourcesOf } from '../lib/sync/state-volumes.js';
import { DefinitionChangedError } from '../lib/errors.js';
import { desktopNotifier } from '../lib/desktop/notifier.js';
import { startInBackground } from './background.js';
import { APPLY_DEFINITION_OP, type HookContext } from './dispatch.js';

/** Handles `prepare begin` for a managed domain. */
export async function prepareBegin({ domain, xml, config, log }: HookContext): Promise<void> {
  const disks = Object.fromEntries(syncedDisks(domain).map((disk) => [disk.target, disk.path as string]));
  try {
    // The XML a start gets is the definition it starts (with the running domain's id): the one to compare with the NAS's.
    const notifier = config.notify ? desktopNotifier(log) : undefined;
    await prepareStart(domain.name, disks, { config, log, openRepository: () => openRepository(config, log), notifier }, stateSourcesOf(domain, config.swtpmDir), xml);
  } catch (error) {
    if (error instanceof DefinitionChangedError) {
      const worker = startInBackground(domain.name, APPLY_DEFINITION_OP, '-', log);
      log.info('putting the definition from the NAS in place in the background', { worker });
    }
    throw error;
  }
}
