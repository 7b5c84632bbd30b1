// After a stop, in the background (started by the hook at release end, detached from
// it), under the domain's lock: seal the tops, the firmware's state and the definition
// (asked of libvirt: this is not the hook) into a generation, merge the pending
// generations into one, push it and give the lease back, then keep the local chains
// within maxChainDepth (lib/sync/disks.ts boundChainDepth) and remove the local layers
// no chain needs any more (lib/sync/local-gc.ts); then, outside the lock, keep the NAS
// bounded (lib/sync/nas-upkeep.ts). Every step can be killed:
// the next run of this or the next start finishes the work. It runs only while its stop
// is still the domain's latest event: a start that came first did the work itself, and
// the VM may be running on the tops again.
import { ConflictError } from '../errors.js';
import type { EngineDeps } from '../layers.js';
import type { Logger } from '../log.js';
import type { Config } from '../config.js';
import type { Generation, Manifest } from '../nas/format.js';
import { hostPlaces } from '../nas/retention.js';
import { decideStop, type NasView } from './decide.js';
import { engineDeps, stateSaver, underLock, type SyncDeps } from './deps.js';
import { adoptPublished, boundChainDepth, mergePending, publishPending, pushPending, sealDisks } from './disks.js';
import { removeUnusedLayers } from './local-gc.js';
import { captureDefinition } from './definitions.js';
import { captureStateVolumes } from './state-volumes.js';
import { localHead, readFlag, readLocalState, takeFlag, type LocalState } from './local-state.js';
import { upkeepNas } from './nas-upkeep.js';
import { stopNotice } from '../desktop/notices.js';
import { lookAtNas, movedOnSince, withDomainLock } from './session.js';

/** Waits this long for the lock: a start or a `kss` command may hold it. */
const STOP_LOCK_WAIT_MS = 60 * 60_000;

/** Why pending generations stayed on this host after the work (lib/sync/decide.ts decideStop, or a push that lost the race). */
export type KeptWhy = 'no-push' | 'lease-held-elsewhere' | 'offline' | 'conflict';

/** How the work after a stop ended: its outcome in words, and why it kept anything here. */
export type StopResult = { superseded: false; outcome: string; kept: KeptWhy | undefined } | { superseded: true; latest: string };

/**
 * Seals, merges and (unless told not to) pushes what the stopped VM wrote, if the
 * domain's latest event is still the one with id `after`: the stop this work is for,
 * or, `byHand` (kss push), the event seen while libvirt said the VM was off (null: none).
 */
export async function finishStop(domain: string, deps: SyncDeps, after: string | null, { byHand = false }: { byHand?: boolean } = {}): Promise<StopResult> {
  const { config, log } = deps;
  const now = deps.now ?? (() => new Date());
  // For kss wait: this stop's work is over once this returns, even failed; a flag that
  // names another stop (or none) is not ours to take. By hand, with nothing started
  // since, every stop's work is done: a flag left over (a cut before a start took it)
  // would keep kss wait waiting for nothing.
  const takeOwnFlag = async (done: boolean) => {
    const flag = await readFlag(config.stateDir, domain, 'stopping');
    if (flag !== undefined && ((after !== null && flag === after) || (byHand && done))) await takeFlag(config.stateDir, domain, 'stopping');
  };
  try {
    // Asked before the lock: a start waiting for the lock does so inside libvirt, which
    // would hold this question up until its deadline.
    const definitionXml = await readDefinitionXml(domain, deps);
    const result: StopResult = await withDomainLock(config.stateDir, domain, log, STOP_LOCK_WAIT_MS, async (lock) => {
      const latest = await movedOnSince(config.stateDir, domain, after);
      if (latest !== undefined) {
        log.info('not sealing: the domain moved on since this stop', { latest });
        return { superseded: true, latest };
      }
      const { outcome, kept } = await sealAndPush(domain, underLock(deps, lock), stateSaver(config.stateDir, lock), now, definitionXml);
      await takeOwnFlag(true); // before the line that tests and people wait for
      log.info('stop finished', { outcome });
      return { superseded: false, outcome, kept };
    });
    if (!result.superseded) {
      const notice = stopNotice(domain, result.outcome, result.kept);
      if (notice) deps.notifier?.show(notice, { final: true });
      // Outside the lock: a start must not wait for it (lib/sync/nas-upkeep.ts).
      await upkeepNas(domain, deps, result.kept === 'offline' || result.kept === 'no-push' ? result.kept : undefined);
    }
    return result;
  } finally {
    await takeOwnFlag(false);
  }
}

async function sealAndPush(domain: string, deps: SyncDeps, save: (state: LocalState) => Promise<void>, now: () => Date, definitionXml: string | undefined): Promise<{ outcome: string; kept: KeptWhy | undefined }> {
  const { config, log } = deps;
  const state = await readLocalState(config.stateDir, domain);
  const noPush = await takeFlag(config.stateDir, domain, 'no-push');
  const engine = engineDeps(deps);
  deps.onStep?.('stop:seal');
  await captureStateVolumes(state, engine, save, 'stop');
  const definition = definitionXml === undefined ? undefined : await captureHere(state, definitionXml, deps.config);
  const sealed = await sealDisks(state, config.host, now(), { deps: engine, save, definition });
  if (sealed) log.info('sealed', { generation: sealed.generation.id, disks: Object.keys(sealed.layers).length });
  const repository = noPush ? undefined : deps.openRepository();
  try {
    const { manifest, nas }: Awaited<ReturnType<typeof lookAtNas>> = repository ? await lookAtNas(repository, domain) : { manifest: undefined, nas: { reachable: false, problem: 'not asked' } satisfies NasView };
    // Before merging: a generation the NAS has must not be merged away into a new one.
    if (adoptPublished(state, manifest, config.host)) {
      log.info('the NAS already has what an interrupted push published', { synced: state.synced?.id });
      await save(state);
    }
    deps.onStep?.('stop:merge');
    if (await mergePending(state, config.host, engine)) {
      log.info('merged pending generations into one', { generation: state.pending[0]?.generation.id });
      await save(state);
    }
    const decision = decideStop(config.host, { synced: state.synced?.id ?? null, pending: state.pending.length, leaseHeld: state.leaseHeld }, nas, { noPush });
    log.info('stop', { decision: decision.action, pending: state.pending.length });

    let outcome: string;
    let kept: KeptWhy | undefined;
    if (decision.action === 'push' && repository) {
      deps.onStep?.('stop:push');
      await pushPending(state, config.stateDir, repository, log, deps.progressFor);
      deps.onStep?.('stop:publish');
      try {
        const published = await publishPending(state, repository, decision.releaseLease ? 'release' : 'keep');
        deps.onStep?.('stop:record');
        state.synced = published;
        state.pending = [];
        if (decision.releaseLease) state.leaseHeld = false;
        outcome = 'pushed';
      } catch (error) {
        if (!(error instanceof ConflictError)) throw error;
        outcome = `conflict: ${error.message}`;
        kept = 'conflict'; // another host pushed between our look and our swap
      }
    } else if (decision.action === 'nothing' && repository) {
      if (decision.releaseLease) {
        deps.onStep?.('stop:release-lease'); // a lost lock stops here: a new start may have just taken the lease
        await repository.setLease(domain, 'release', null);
      }
      state.leaseHeld = state.leaseHeld && !decision.releaseLease;
      outcome = 'nothing to push';
    } else {
      outcome = decision.action === 'keep-pending' ? `kept here (${decision.why}: ${decision.detail})` : 'nothing to do';
      if (decision.action === 'keep-pending') kept = decision.why;
      if (decision.action === 'keep-pending' && decision.why !== 'no-push') log.warn('not pushed', { why: decision.why, detail: decision.detail });
    }
    state.lastSync = { at: now().toISOString(), outcome };
    await save(state);
    deps.onStep?.('stop:compact');
    // No deeper than the NAS may be either: the NAS gets this host's merged layers (nas-upkeep.ts).
    const depth = Math.min(config.maxChainDepth, config.nasChainDepth);
    const places = othersPlaces(manifest, config, now());
    const compacted = await boundChainDepth(state, depth, engine, places);
    if (compacted.length > 0) {
      log.info('compacted the local chain', { disks: compacted.join(','), maxChainDepth: depth });
      await save(state);
    }
    deps.onStep?.('stop:collect'); // outside the catch below: a lost lock stops here, before any file goes
    await collectLayers(state, places, engine, log);
    return { outcome, kept };
  } finally {
    await repository?.close();
  }
}

/** The domain's definition as libvirt has it now; undefined when libvirt cannot say (the generation then keeps the local head's). */
async function readDefinitionXml(domain: string, { log, libvirt }: SyncDeps): Promise<string | undefined> {
  try {
    return await libvirt?.read(domain);
  } catch (error) {
    log.warn('could not read the definition from libvirt; this generation keeps the one before', { error: (error as Error).message });
    return undefined;
  }
}

/** The definition, captured (lib/sync/definitions.ts), when there is something to capture it into. */
async function captureHere(state: LocalState, xml: string, config: Config): Promise<{ hash: string; changedHere: boolean } | undefined> {
  // Without a generation here (a start refused before this host ever synced), nothing to capture it into yet;
  // after a start refused for a newer definition, nothing ran on this one, and it is about to be replaced.
  if (localHead(state) === null || state.definitionRefused !== undefined) return undefined;
  return captureDefinition(config.stateDir, state, xml, config);
}

/**
 * The generations the other hosts were last in step with, as the NAS says: their layers
 * stay here, so that a catch-up layer can be built on them (lib/sync/nas-upkeep.ts).
 */
function othersPlaces(manifest: Manifest | undefined, config: Config, now: Date): Generation[] {
  return manifest ? hostPlaces(manifest, now, config.retentionBranchDays, config.host).map((place) => place.generation) : [];
}

/**
 * Removes the local layers no chain needs any more. The outcome is recorded already and
 * every file it keeps is whole, so a failure here is told and the work goes on.
 */
async function collectLayers(state: LocalState, keepAlso: Generation[], engine: EngineDeps, log: Logger): Promise<void> {
  try {
    const { removed, bytes, skipped } = await removeUnusedLayers(state, keepAlso, engine);
    if (removed.length > 0) log.info('removed unused local layers', { layers: removed.length, bytes });
    for (const { disk, why } of skipped) log.warn('kept every local layer of a disk', { disk, why });
  } catch (error) {
    log.warn('could not remove unused local layers; they stay until the next stop', { error: (error as Error).message });
  }
}
