// The checkpoint process the started hook starts (hooks/started.ts): lib/checkpoint/daemon.ts.
import { runCheckpoints } from '../lib/checkpoint/daemon.js';
import { openRepository } from '../lib/nas/open.js';
import { libvirtUri } from '../lib/virsh.js';
import type { HookContext } from './dispatch.js';

export async function checkpointsBegin({ domain, extra, config, log }: HookContext): Promise<void> {
  await runCheckpoints(domain.name, extra, { config, log, openRepository: () => openRepository(config, log), uri: libvirtUri(process.env) });
}
