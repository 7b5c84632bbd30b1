// restore begin: a saved memory image is about to be restored. Its disks must be
// exactly as they were saved, so the prepare that follows must not sync: leave it a
// one-shot flag that names the managed-save image (a flag left by a restore that
// failed must not let a later ordinary start skip the NAS: lib/sync/start.ts). Nothing
// is written to stdout: libvirt reads it back as domain XML.
import { setFlag } from '../lib/sync/local-state.js';
import { managedSaveIdentity } from '../lib/sync/managed-save.js';
import type { HookContext } from './dispatch.js';

/** Handles `restore begin` for a managed domain. */
export async function restoreBegin({ domain, config, log }: HookContext): Promise<void> {
  const image = await managedSaveIdentity(domain.name);
  await setFlag(config.stateDir, domain.name, 'restoring', image ?? 'none');
  if (image) log.info('restoring a managed-save image: the next start leaves the disks as they are');
  else log.warn('a restore without a managed-save image (virsh restore FILE): the next start syncs as usual');
}
