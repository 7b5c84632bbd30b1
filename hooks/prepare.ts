// prepare begin: the only moment to change disk files before a start.
// So far it inspects each synced disk's chain; pulling and the fresh overlay come with
// the lifecycle (issue 4).
import { syncedDisks } from '../lib/domain-xml.js';
import { readChain } from '../lib/layers.js';
import type { HookContext } from './dispatch.js';

/** Handles `prepare begin` for a managed domain. */
export async function prepareBegin({ domain, log }: HookContext): Promise<void> {
  for (const disk of syncedDisks(domain)) {
    const chain = await readChain(disk.path as string);
    log.info('disk chain', { disk: disk.target, path: disk.path, depth: chain.length });
  }
}
