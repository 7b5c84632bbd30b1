// restore begin: a saved memory image is about to be restored. Its disks must be
// exactly as they were saved, so the prepare that follows must not sync: leave it a
// one-shot flag. (Nothing is written to stdout: libvirt reads it back as domain XML.)
import { setFlag } from '../lib/sync/local-state.js';
import type { HookContext } from './dispatch.js';

/** Handles `restore begin` for a managed domain. */
export async function restoreBegin({ domain, config, log }: HookContext): Promise<void> {
  await setFlag(config.stateDir, domain.name, 'restoring');
  log.info('restoring a saved image: the next start leaves the disks as they are');
}
