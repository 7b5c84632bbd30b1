// The background work after a stop (see hooks/release.ts): seal, merge, push.
import { openRepository } from '../lib/nas/open.js';
import { finishStop } from '../lib/sync/stop.js';
import { LIBVIRT_DEADLINE_MS, libvirtDefinitions } from '../lib/commands/libvirt-domain.js';
import type { HookContext } from './dispatch.js';

/** Runs the work after a stop, detached from libvirt; `extra` is the stop's event id (hooks/release.ts). */
export async function finishStopBegin({ domain, config, log, extra }: HookContext): Promise<void> {
  // Detached from libvirt's hook call, so it may ask libvirt for the definition; bounded,
  // since it holds the domain lock meanwhile.
  const libvirt = libvirtDefinitions(process.env, LIBVIRT_DEADLINE_MS);
  await finishStop(domain.name, { config, log, openRepository: () => openRepository(config, log), libvirt }, extra);
}
