// release end: the VM has stopped and no process holds its images.
// So far it records whether each synced disk's top holds new writes; sealing and the
// push come with the lifecycle (issue 4).
import { syncedDisks } from '../lib/domain-xml.js';
import { hasOwnData } from '../lib/layers.js';
import type { HookContext } from './dispatch.js';

/** Handles `release end` for a managed domain. */
export async function releaseEnd({ domain, extra, log }: HookContext): Promise<void> {
  for (const disk of syncedDisks(domain)) {
    log.info('disk top after stop', { disk: disk.target, reason: extra, written: await hasOwnData(disk.path as string) });
  }
}
