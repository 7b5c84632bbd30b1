// release end: the VM has stopped and no process holds its images. Sealing hashes the
// whole top and a push can take minutes, while libvirt blocks every call about the
// domain until this hook returns: so the work runs in the background (hooks/background.ts).
// It takes the domain lock; the next start waits for it, or finishes the work if it died.
import { recordEvent, setFlag } from '../lib/sync/local-state.js';
import { managedSaveIdentity } from '../lib/sync/managed-save.js';
import { startInBackground } from './background.js';
import { FINISH_STOP_OP, type HookContext } from './dispatch.js';

/** Handles `release end` for a managed domain. */
export async function releaseEnd({ domain, config, log }: HookContext): Promise<void> {
  if ((await managedSaveIdentity(domain.name)) !== undefined) {
    log.info('managed save: the disks stay as they are until the VM is restored');
    return;
  }
  // The work is for this stop only: it runs while the stop is still the latest event.
  const stop = await recordEvent(config.stateDir, domain.name, 'stop');
  // Until the background work has taken the domain lock, only this says a stop is pending.
  await setFlag(config.stateDir, domain.name, 'stopping', stop.id);
  const worker = startInBackground(domain.name, FINISH_STOP_OP, stop.id, log);
  log.info('finishing the stop in the background', { worker, stop: stop.id });
}
