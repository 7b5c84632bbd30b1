// Work a hook call starts and does not wait for: libvirt blocks every call about the
// domain until the hook returns, and the hook must never call libvirt itself. The work
// runs in this same executable (AppArmor lets the hook run nothing else) with an
// internal operation, fully detached: its own session, stdio on /dev/null, so that
// libvirt does not wait for it either.
import { spawn } from 'node:child_process';
import type { Logger } from '../lib/log.js';

/** Starts `hook qemu DOMAIN OP begin EXTRA` in the background; returns its pid. */
export function startInBackground(domain: string, op: string, extra: string, log: Logger): number | undefined {
  const child = spawn(process.execPath, ['hook', 'qemu', domain, op, 'begin', extra], {
    argv0: 'kvm-snapshot-sync',
    detached: true,
    stdio: 'ignore',
    env: process.env,
  });
  child.on('error', (error) => log.warn('could not start the background work', { op, error: error.message }));
  child.unref();
  return child.pid;
}
