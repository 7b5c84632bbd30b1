// After a stop, in the background (started by the hook at release end, detached from
// it), under the domain's lock: seal the tops into a generation, merge the pending
// generations into one, push it and give the lease back, then keep the local chains
// within maxChainDepth (lib/sync/disks.ts boundChainDepth). Every step can be killed:
// the next run of this or the next start finishes the work.
import { ConflictError } from '../errors.js';
import { decideStop, type NasView } from './decide.js';
import { boundChainDepth, mergePending, publishPending, pushPending, sealDisks } from './disks.js';
import { readLocalState, takeFlag, writeLocalState } from './local-state.js';
import { lookAtNas, withDomainLock } from './session.js';
import { engineDeps, type SyncDeps } from './start.js';

/** Waits this long for the lock: a start or a `kss` command may hold it. */
const STOP_LOCK_WAIT_MS = 60 * 60_000;

/** Seals, merges and (unless told not to) pushes what the stopped VM wrote. */
export async function finishStop(domain: string, deps: SyncDeps): Promise<void> {
  try {
    await sealAndPush(domain, deps);
  } finally {
    await takeFlag(deps.config.stateDir, domain, 'stopping'); // for kss wait: this stop's work is over, even failed
  }
}

async function sealAndPush(domain: string, deps: SyncDeps): Promise<void> {
  const { config, log } = deps;
  const now = deps.now ?? (() => new Date());
  await withDomainLock(config.stateDir, domain, log, STOP_LOCK_WAIT_MS, async () => {
    const state = await readLocalState(config.stateDir, domain);
    const noPush = await takeFlag(config.stateDir, domain, 'no-push');
    const engine = engineDeps(deps);
    deps.onStep?.('stop:seal');
    const sealed = await sealDisks(state, config.host, now(), { deps: engine });
    if (sealed) {
      state.pending.push(sealed);
      log.info('sealed', { generation: sealed.generation.id, disks: Object.keys(sealed.layers).length });
      await writeLocalState(config.stateDir, state);
    }
    deps.onStep?.('stop:merge');
    if (await mergePending(state, config.host, engine)) {
      log.info('merged pending generations into one', { generation: state.pending[0]?.generation.id });
      await writeLocalState(config.stateDir, state);
    }

    const repository = noPush ? undefined : deps.openRepository();
    try {
      const { nas }: { nas: NasView } = repository ? await lookAtNas(repository, domain) : { nas: { reachable: false, problem: 'not asked' } };
      const decision = decideStop(config.host, { synced: state.synced?.id ?? null, pending: state.pending.length, leaseHeld: state.leaseHeld }, nas, { noPush });
      log.info('stop', { decision: decision.action, pending: state.pending.length });

      let outcome: string;
      if (decision.action === 'push' && repository) {
        deps.onStep?.('stop:push');
        await pushPending(state, repository, log, deps.progressFor);
        deps.onStep?.('stop:publish');
        try {
          state.synced = await publishPending(state, repository, decision.releaseLease ? 'release' : 'keep');
          state.pending = [];
          if (decision.releaseLease) state.leaseHeld = false;
          outcome = 'pushed';
        } catch (error) {
          if (!(error instanceof ConflictError)) throw error;
          outcome = `conflict: ${error.message}`;
        }
      } else if (decision.action === 'nothing' && repository) {
        if (decision.releaseLease) await repository.setLease(domain, 'release', null);
        state.leaseHeld = state.leaseHeld && !decision.releaseLease;
        outcome = 'nothing to push';
      } else {
        outcome = decision.action === 'keep-pending' ? `kept here (${decision.why}: ${decision.detail})` : 'nothing to do';
        if (decision.action === 'keep-pending' && decision.why !== 'no-push') log.warn('not pushed', { why: decision.why, detail: decision.detail });
      }
      state.lastSync = { at: now().toISOString(), outcome };
      await writeLocalState(config.stateDir, state);
      deps.onStep?.('stop:compact');
      const compacted = await boundChainDepth(state, config.maxChainDepth, engine);
      if (compacted.length > 0) {
        log.info('compacted the local chain', { disks: compacted.join(','), maxChainDepth: config.maxChainDepth });
        await writeLocalState(config.stateDir, state);
      }
      await takeFlag(config.stateDir, domain, 'stopping'); // before the line tests and people wait for
      log.info('stop finished', { outcome });
    } finally {
      await repository?.close();
    }
  });
}
