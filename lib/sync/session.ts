// What every lifecycle operation does around its work: hold the domain's lock, and look
// at the NAS (where an unreachable NAS is part of the picture, not a failure).
import { NasUnreachableError } from '../errors.js';
import { withLock, type HeldLock } from '../lock.js';
import type { Logger } from '../log.js';
import type { Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import type { NasView } from './decide.js';
import { domainLockPath } from './local-state.js';

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
