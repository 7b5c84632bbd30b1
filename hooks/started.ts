// started begin: the VM runs. With checkpoints on, the session's checkpoint process is
// started in the background (lib/checkpoint/daemon.ts): it calls virsh, which the hook
// must never do, and it lives as long as the VM.
import { readLocalState } from '../lib/sync/local-state.js';
import { startInBackground } from './background.js';
import { CHECKPOINTS_OP, type HookContext } from './dispatch.js';

/** Handles `started begin` for a managed domain. */
export async function startedBegin({ domain, config, log }: HookContext): Promise<void> {
  if (config.checkpointSeconds === 0) return;
  const session = (await readLocalState(config.stateDir, domain.name)).checkpoints;
  // A restore goes on with the session it saved (its bitmaps are in the tops).
  if (session === undefined) return;
  const worker = startInBackground(domain.name, CHECKPOINTS_OP, session.id, log);
  log.info('checkpoints in the background', { worker, session: session.id });
}
