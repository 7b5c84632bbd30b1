// release end: the VM has stopped and no process holds its images. Sealing hashes the
// whole top and a push can take minutes, while libvirt blocks every call about the
// domain until this hook returns: so the work runs in a background process, fully
// detached (own session, stdio on /dev/null), which is this same executable (AppArmor
// lets the hook run nothing else) with an internal operation. It takes the domain lock;
// the next start waits for it, or finishes the work if it died.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setFlag } from '../lib/sync/local-state.js';
import { FINISH_STOP_OP, type HookContext } from './dispatch.js';

/** Where libvirt keeps managed-save images: a saved VM's disks must stay as they are. */
export const MANAGED_SAVE_DIR = '/var/lib/libvirt/qemu/save';

/** Handles `release end` for a managed domain. */
export async function releaseEnd({ domain, config, log }: HookContext): Promise<void> {
  if (existsSync(join(MANAGED_SAVE_DIR, `${domain.name}.save`))) {
    log.info('managed save: the disks stay as they are until the VM is restored');
    return;
  }
  // Until the background work has taken the domain lock, only this says a stop is pending.
  await setFlag(config.stateDir, domain.name, 'stopping');
  const child = spawn(process.execPath, ['hook', 'qemu', domain.name, FINISH_STOP_OP, 'begin', '-'], {
    argv0: 'kvm-snapshot-sync',
    detached: true,
    stdio: 'ignore',
    env: process.env,
  });
  child.unref();
  log.info('finishing the stop in the background', { pid: child.pid });
}
