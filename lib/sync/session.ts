// What every lifecycle operation does around its work: hold the domain's lock, and look
// at the NAS (where an unreachable NAS is part of the picture, not a failure).
import { NasUnreachableError, UsageError } from '../errors.js';
import { withLock, type HeldLock } from '../lock.js';
import type { Logger } from '../log.js';
import type { Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import type { NasView } from './decide.js';
import { domainLockPath, readLastEvent } from './local-state.js';

/**
 * Runs `work` holding the domain's lock (waiting up to `waitMs` for it, telling
 * `onWait` when it has to); always releases it. `work` is given the lock to check
 * before each step (lib/sync/deps.ts underLock).
 */
export function withDomainLock<T>(
  stateDir: string,
  domain: string,
  log: Logger,
  waitMs: number,
  work: (lock: HeldLock) => Promise<T>,
  onWait?: () => void,
): Promise<T> {
  const onCompromised = (error: Error) => log.error('lost the domain lock', { error: error.message });
  return withLock(domainLockPath(stateDir, domain), { waitMs, onCompromised, onWait }, work);
}

/** The domain's manifest and the NAS as a decision sees it. */
export async function lookAtNas(repository: NasRepository, domain: string): Promise<{ manifest: Manifest | undefined; nas: NasView }> {
  try {
    const manifest = await repository.readManifest(domain);
    return { manifest, nas: { reachable: true, head: manifest?.head ?? null, lease: manifest?.lease ?? null } };
  } catch (error) {
    if (!(error instanceof NasUnreachableError)) throw error;
    return { manifest: undefined, nas: { reachable: false, problem: error.message } };
  }
}

/**
 * What came since the domain's event `after` (null: none recorded), in words ("a start
 * at …"), or undefined while `after` is still its latest event.
 */
export async function movedOnSince(stateDir: string, domain: string, after: string | null): Promise<string | undefined> {
  const latest = await readLastEvent(stateDir, domain);
  if ((latest?.id ?? null) === after) return undefined;
  return latest ? `a ${latest.kind} at ${latest.at}` : 'nothing';
}

/**
 * For CLI work on a shut-off domain, under its lock: refuses when the domain's latest
 * event is no longer `after`, the one seen while libvirt said the VM was off (the CLI
 * asks libvirt before it takes the lock): a start came in between, and the VM may be
 * running on the disks.
 */
export async function requireNoEventSince(stateDir: string, domain: string, after: string | null): Promise<void> {
  if ((await movedOnSince(stateDir, domain, after)) === undefined) return;
  throw new UsageError(`${domain} was started (or stopped) while this command waited: its disks may be in use; nothing was changed`, {
    remedy: `shut it down (kss stop ${domain}), wait for its push (kss wait ${domain}), then run the command again`,
  });
}
