// The background work after a stop (see hooks/release.ts): seal, merge, push.
import { openRepository } from '../lib/nas/open.js';
import { finishStop } from '../lib/sync/stop.js';
import { LIBVIRT_DEADLINE_MS, libvirtDefinitions } from '../lib/commands/libvirt-domain.js';
import { failedStopNotice } from '../lib/desktop/notices.js';
import { desktopNotifier } from '../lib/desktop/notifier.js';
import type { HookContext } from './dispatch.js';

/** How long the stop work waits, at its end, for its notice to be handed to the desktop. */
const NOTICE_WAIT_MS = 5000;

/** Runs the work after a stop, detached from libvirt; `extra` is the stop's event id (hooks/release.ts). */
export async function finishStopBegin({ domain, config, log, extra }: HookContext): Promise<void> {
  // Detached from libvirt's hook call, so it may ask libvirt for the definition; bounded,
  // since it holds the domain lock meanwhile.
  const libvirt = libvirtDefinitions(process.env, LIBVIRT_DEADLINE_MS);
  const notifier = config.notify ? desktopNotifier(log) : undefined;
  try {
    await finishStop(domain.name, { config, log, openRepository: () => openRepository(config, log), libvirt, notifier }, extra);
  } catch (error) {
    notifier?.show(failedStopNotice(domain.name, error), { final: true });
    throw error;
  } finally {
    await notifier?.settled(NOTICE_WAIT_MS);
  }
}
