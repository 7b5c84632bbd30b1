// Before a start (hook: prepare begin), under the domain's lock: seal what a run that
// did not stop cleanly left in the tops, look at the NAS, decide (lib/sync/decide.ts),
// then push what is pending, or pull what is newer, put fresh empty tops on the newest
// generation, and take the lease. A refusal is a typed error whose message libvirt
// shows to the person who pressed Start: what happened, since when, and the command
// that resolves it.
import { randomBytes } from 'node:crypto';
import { beginSession } from '../checkpoint/session.js';
import { ConflictError, DefinitionChangedError, DiskStateError, LeaseHeldError, NasUnreachableError } from '../errors.js';
import { makePrivate, type EngineDeps } from '../layers.js';
import type { Config } from '../config.js';
import type { Generation, Manifest } from '../nas/format.js';
import type { NasRepository } from '../nas/repository.js';
import { readClientEnvironment } from './client-env.js';
import { decideStart, type NasView, type StartDecision } from './decide.js';
import { engineDeps, stateSaver, underLock, type SyncDeps } from './deps.js';
import { adoptPublished, logProgress, meterProgress, mergePending, missingLayers, publishPending, pullGeneration, pushPending, rotateTops, sealDisks, type ProgressFor } from './disks.js';
import { hasFlag, localHead, readFlag, readLocalState, recordEvent, takeFlag, type LocalState } from './local-state.js';
import { managedSaveIdentity } from './managed-save.js';
import { recordDefinition, splitHere } from './definitions.js';
import { attachStateVolumes, captureStateVolumes, placeStateVolumes, type StateSource } from './state-volumes.js';
import { startNotices, type StartNotices } from '../desktop/notices.js';
import { createProgressMeter } from '../progress.js';
import { lookAtNas, withDomainLock } from './session.js';

/** How long a start waits for the background work of the last stop (a large push). */
const START_LOCK_WAIT_MS = 60 * 60_000;

/**
 * Runs everything a start needs; throws a typed error to refuse it. `sources`: the
 * state the domain keeps beside its disks (lib/sync/state-volumes.ts), put in place last.
 * `definitionXml`: the definition being started, as the hook got it (undefined: not
 * known; then what this host last captured or put in place stands for it).
 */
export async function prepareStart(domain: string, disks: Record<string, string>, deps: SyncDeps, sources: readonly StateSource[] = [], definitionXml?: string): Promise<void> {
  const { config, log } = deps;
  const now = deps.now ?? (() => new Date());
  // Ask the NAS at once, before the lock: its answer (a new SSH connection, most of a
  // start's cost) comes while the local work runs. Not when this start will not sync
  // (a hung share could not be stopped); asked again if the lock had to be waited for
  // (a push of this host's may have moved the NAS meanwhile).
  const client = await (deps.clientEnvironment ?? readClientEnvironment)(domain);
  // A restore leaves the disks alone only for the managed-save image its restore begin
  // saw, still there: a flag left by a restore that failed before this start is stale.
  const restoreOf = await readFlag(config.stateDir, domain, 'restoring');
  const restoring = restoreOf !== undefined && restoreOf === (await managedSaveIdentity(domain));
  const skipping = client.skipSync || (await hasFlag(config.stateDir, domain, 'skip-sync')) || restoring;
  let repository = skipping ? undefined : deps.openRepository();
  deps.onStep?.('start:read-nas');
  let looking = repository ? quietly(lookAtNas(repository, domain)) : undefined;
  let waited = false;
  // The person at the machine, told when this start waits longer than a moment.
  const notices = deps.notifier ? startNotices(domain, deps.notifier) : undefined;
  const told: SyncDeps = notices ? { ...deps, progressFor: noticedProgress(deps.progressFor ?? logProgress(log), notices), tell: (what) => notices.waitingFor(what) } : deps;
  try {
    await withDomainLock(
      config.stateDir,
      domain,
      log,
      START_LOCK_WAIT_MS,
      async (lock) => {
        // From here on, the work of any earlier stop is this start's (lib/sync/stop.ts).
        await recordEvent(config.stateDir, domain, 'start', now());
        const guarded = underLock(told, lock);
        const engine = engineDeps(guarded);
        const save = stateSaver(config.stateDir, lock);
        const state = await readLocalState(config.stateDir, domain);
        state.disks = disks;
        attachStateVolumes(state, sources, config.stateDir);
        // One-shot flags are consumed by this start whatever else asks the same.
        await takeFlag(config.stateDir, domain, 'stopping'); // a stop whose work never ran: this start does it
        if ((await takeFlag(config.stateDir, domain, 'restoring')) && !restoring) {
          log.warn('ignored a restore flag without its managed-save image: a restore that failed left it; this is an ordinary start');
        }
        const flags = {
          restoring,
          skipSync: (await takeFlag(config.stateDir, domain, 'skip-sync')) || client.skipSync,
          stealLease: (await takeFlag(config.stateDir, domain, 'steal-lease')) || client.stealLease,
        };
        if (client.skipSync || client.stealLease) log.info('asked by the client environment', { note: client.note, noSync: client.skipSync, stealLease: client.stealLease });
        else if (client.ignored) log.info('ignored the environment of a local virsh start client', { note: client.note });
        const useNas = !flags.restoring && !flags.skipSync;
        if (!useNas) await repository?.close(); // stops the question under way
        else if (waited || !repository) {
          await looking?.catch(() => undefined);
          repository ??= deps.openRepository();
          looking = quietly(lookAtNas(repository, domain));
        }
        if (!flags.restoring) {
          guarded.onStep?.('start:seal');
          await captureStateVolumes(state, engine, save, 'start');
          const sealed = await sealDisks(state, config.host, now(), { deps: engine, save });
          if (sealed) log.warn('sealed writes left by a run that did not stop cleanly', { generation: sealed.generation.id });
        }
        await save(state); // the disks as this start's XML names them, whatever follows
        await decideAndSync(domain, state, flags, useNas ? repository : undefined, useNas ? looking : undefined, guarded, save, now, definitionXml || undefined);
        if (!flags.restoring) {
          // Bitmaps on the fresh tops, before QEMU opens them: the checkpoints know every write (lib/checkpoint/).
          await beginSession(state, config.checkpointSeconds > 0, randomBytes(6).toString('hex'), now(), engine);
          await save(state);
        }
        // A restore resumes the VM on the state it was saved with, files and all.
        if (!flags.restoring) await placeStateVolumes(state, engine, save, log, now());
        for (const top of Object.values(state.disks)) {
          await makePrivate(top, (path, error) => log.warn('could not make a disk file private', { path, error: error.message }));
        }
      },
      () => {
        waited = true;
        notices?.waitingFor(`waiting for the work of its last stop to finish (kss status ${domain} shows it)`);
      },
    );
    notices?.finish();
  } catch (error) {
    notices?.finish(error);
    throw error;
  } finally {
    await repository?.close();
    await looking?.catch(() => undefined);
  }
}

/** Progress as `shown` shows it (log lines), and, with rate and time left, to the start's notices. */
function noticedProgress(shown: ProgressFor, notices: StartNotices): ProgressFor {
  return (label) => {
    const show = shown(label);
    const notice = meterProgress((total) => createProgressMeter(total, (report) => notices.progress(label, report), { intervalMs: 1000 }));
    return (done, total) => {
      show(done, total);
      notice(done, total);
    };
  };
}

/** The same promise, marked as handled: it is awaited later, and may fail before that. */
function quietly<T>(promise: Promise<T>): Promise<T> {
  promise.catch(() => undefined);
  return promise;
}

/** With the local state settled: looks at the NAS, decides, and syncs or refuses. */
async function decideAndSync(
  domain: string,
  state: LocalState,
  flags: { restoring: boolean; skipSync: boolean; stealLease: boolean },
  repository: NasRepository | undefined,
  looking: ReturnType<typeof lookAtNas> | undefined,
  deps: SyncDeps,
  save: (state: LocalState) => Promise<void>,
  now: () => Date,
  starting: string | undefined,
): Promise<void> {
  const { config, log } = deps;
  const engine = engineDeps(deps);
  const { manifest, nas }: { manifest?: Manifest; nas: NasView } = (await looking) ?? { nas: { reachable: false, problem: 'not asked' } };
  if (adoptPublished(state, manifest, config.host)) {
    log.info('the NAS already has what an interrupted push published', { synced: state.synced?.id });
    await save(state);
  }
  const local = { synced: state.synced?.id ?? null, pending: state.pending.length, leaseHeld: state.leaseHeld };
  const decision = decideStart(config.host, local, nas, flags);
  log.info('start', { decision: describe(decision), synced: local.synced ?? 'none', pending: local.pending, nasHead: manifest?.head ?? 'none' });

  switch (decision.action) {
    case 'leave-disks':
      return;
    case 'start-local': {
      const head = localHead(state);
      if (!head) throw new DiskStateError(`${domain} has no local generation to start from`, { remedy: `start it with the NAS reachable (without --no-sync): that fetches it` });
      await rotateTops(state, head, engine);
      state.definitionRefused = undefined; // this definition runs, as asked: its stop captures it
      log.warn(decision.why === 'skip-sync' ? 'started without syncing, as asked' : 'the NAS is unreachable; started on the lease this host holds', {
        problem: decision.problem,
      });
      return;
    }
    case 'refuse':
      throw refusal(domain, decision, state, manifest);
    case 'sync':
      await sync(domain, state, manifest, decision, repository as NasRepository, deps, save, now, engine, starting);
  }
}

async function sync(
  domain: string,
  state: LocalState,
  manifest: Manifest | undefined,
  decision: Extract<StartDecision, { action: 'sync' }>,
  repository: NasRepository,
  { config, log, onStep, progressFor, tell }: SyncDeps,
  save: (state: LocalState) => Promise<void>,
  now: () => Date,
  engine: EngineDeps,
  starting: string | undefined,
): Promise<void> {
  if (decision.stealFrom) log.warn('taking the lease from another host, as asked', { from: decision.stealFrom.host, since: decision.stealFrom.since });
  if (decision.push) {
    // The start waits until the NAS has this host's changes.
    onStep?.('start:merge');
    if (await mergePending(state, config.host, engine)) await save(state);
    onStep?.('start:push');
    tell?.("pushing this machine's last session to the NAS first");
    await pushPending(state, config.stateDir, repository, log, progressFor);
    onStep?.('start:publish');
    const published = await publishPending(state, repository, 'take');
    onStep?.('start:record');
    state.synced = published;
    state.pending = [];
  } else {
    const head = decision.pull ? (manifest as Manifest).generations[(manifest as Manifest).head as string]! : state.synced!;
    await requireDefinitionHere(domain, state, head, starting, { config, repository, save });
    if (decision.pull) {
      onStep?.('start:pull');
      tell?.('fetching the newest state from the NAS');
      await pullGeneration(state, manifest as Manifest, head, repository, log, progressFor);
      onStep?.('start:rotate');
      await rotateTops(state, head, engine);
      state.synced = head;
      await save(state);
      onStep?.('start:take-lease');
      await repository.setLease(domain, 'take', head.id);
    } else {
      // In step: the fresh top (local) and the lease (the NAS) do not wait for each other.
      // A state volume new to this host's definition may still lack its layers.
      if (manifest && (await missingLayers(state, manifest, state.synced!)).length > 0) await pullGeneration(state, manifest, state.synced!, repository, log, progressFor);
      onStep?.('start:rotate');
      const rotating = rotateTops(state, state.synced!, engine);
      onStep?.('start:take-lease');
      const taking = repository.setLease(domain, 'take', state.synced?.id ?? null);
      const failed = (await Promise.allSettled([rotating, taking])).find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    }
  }
  state.leaseHeld = true;
  state.lastSync = { at: now().toISOString(), outcome: decision.push ? 'pushed before start' : decision.pull ? 'pulled before start' : 'in step' };
  await save(state);
}

/**
 * Refuses a start onto a generation whose definition is not the one being started:
 * the hook cannot define a domain, so the caller (hooks/prepare.ts) has it put in place
 * in the background, and the next start runs with it. Never an old definition silently.
 * The one being started is `starting` (its XML) when known, else the one this host last
 * captured or put in place; one that is the generation's is recorded as this host's (not
 * saved: the start's next save does). Split only here, for a generation that has one.
 */
async function requireDefinitionHere(
  domain: string,
  state: LocalState,
  generation: Generation,
  startingXml: string | undefined,
  { config, repository, save }: { config: Config; repository: NasRepository; save: (state: LocalState) => Promise<void> },
): Promise<void> {
  const stateDir = config.stateDir;
  const wanted = generation.definition;
  if (wanted === undefined) return;
  // Never compared here (a domain defined by hand on each host): its UUID and disk paths are this host's own, against the NAS's.
  const basis = startingXml !== undefined && state.definition === undefined ? await repository.readDefinition(domain, wanted) : undefined;
  const starting = startingXml === undefined ? undefined : await splitHere(stateDir, state, startingXml, config, basis);
  if (starting?.hash === wanted) {
    if (state.definition !== wanted || state.definitionRefused !== undefined) await recordDefinition(stateDir, state, starting.text, starting.host);
    return;
  }
  // Changed here since this host was in step: that change is the newer one (its stop takes it to the NAS).
  if (wanted === state.definition) {
    state.definitionRefused = undefined;
    return;
  }
  state.definitionRefused = wanted;
  await save(state);
  throw new DefinitionChangedError(
    `${domain}'s definition is newer on the NAS (generation ${generation.id.slice(0, 12)} from host ${generation.host}, ${generation.created}) than the one libvirt has here; it is being put in place now.`,
    { remedy: `start ${domain} again in a moment. If this comes back, kss pull ${domain} puts it in place and says what stops it (kss log ${domain} too)` },
  );
}

function refusal(domain: string, decision: Extract<StartDecision, { action: 'refuse' }>, state: LocalState, manifest: Manifest | undefined): Error {
  switch (decision.why) {
    case 'lease-held':
      return new LeaseHeldError(`${domain} is in use on host ${decision.lease.host} since ${decision.lease.since}.`, {
        remedy: `shut it down there first (its changes then go to the NAS), or take it over on purpose: kss start ${domain} --steal-lease`,
      });
    case 'conflict': {
      const head = manifest?.generations[decision.nasHead ?? ''];
      const since = state.synced ? `generation ${state.synced.id.slice(0, 12)}` : 'it was enabled';
      return new ConflictError(
        `${domain} changed both here and on the NAS: this host has ${state.pending.length} unsynced generation(s) since ${since}, and the NAS now has ${head ? `${head.id.slice(0, 12)} from host ${head.host} at ${head.created}` : decision.nasHead}.`,
        { remedy: `keep one side (the other is kept as a branch): kss resolve ${domain} --keep local, or kss resolve ${domain} --keep remote` },
      );
    }
    case 'offline':
      return new NasUnreachableError(
        `the NAS cannot be reached and this host does not hold ${domain}'s lease: starting now could fork it without anyone noticing. (${decision.problem})`,
        { remedy: `start it without syncing on purpose: kss start ${domain} --no-sync` },
      );
    case 'not-enabled':
      return new DiskStateError(`${domain} has nothing on the NAS and no local generation`, { remedy: `kss enable ${domain}` });
  }
}

function describe(decision: StartDecision): string {
  if (decision.action === 'sync') return decision.push ? 'push-then-start' : decision.pull ? 'pull-then-start' : 'in-step';
  return `${decision.action}:${decision.why}`;
}
