// release end: the VM has stopped and no process holds its images. Sealing hashes the
// whole top and a push can take minutes, while libvirt blocks every call about the
// domain until this hook returns: so the work runs in a background process, fully
// detached (own session, stdio on /dev/null), which is this same executable (AppArmor
// lets the hook run nothing else) with an internal operation. It takes the domain lock;
// the next start waits for it, or finishes the work if it died.
import { spawn } from 'node:child_process';
import { recordEvent, setFlag } from '../lib/sync/local-state.js';
import { managedSaveIdentity } from '../lib/sync/managed-save.js';
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
  const child = spawn(process.execPath, ['hook', 'qemu', domain.name, FINISH_STOP_OP, 'begin', stop.id], {
    argv0: 'kvm-snapshot-sync',
    detached: true,
    stdio: 'ignore',
    env: process.env,
  });
  child.unref();
  log.info('finishing the stop in the background', { worker: child.pid, stop: stop.id });
}
