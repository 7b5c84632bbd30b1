// The background work after a start refused for a definition that changed on another
// host (hooks/prepare.ts): puts it in place through libvirt, which the hook itself may
// not call, so that the next start runs with it.
import { LIBVIRT_DEADLINE_MS, libvirtDefinitions } from '../lib/commands/libvirt-domain.js';
import { openRepository } from '../lib/nas/open.js';
import { putDefinitionInPlace } from '../lib/sync/definitions.js';
import type { HookContext } from './dispatch.js';

/** Puts the definition the next start needs in place, detached from libvirt. */
export async function applyDefinitionBegin({ domain, config, log }: HookContext): Promise<void> {
  const libvirt = libvirtDefinitions(process.env, LIBVIRT_DEADLINE_MS);
  await putDefinitionInPlace(domain.name, { config, log, openRepository: () => openRepository(config, log), libvirt });
}
