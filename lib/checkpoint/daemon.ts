// The checkpoint process of one running session: started by the hook at `started begin`,
// fully detached (hooks/background.ts), at low priority; it ends when the VM's QEMU does
// or the session is no longer the local state's. Every `checkpointSeconds` (sooner when
// the tops grew by `checkpointBytes`) it freezes what the guest wrote since the last
// checkpoint into a layer per disk (lib/checkpoint/freeze.ts), records it as a pending
// generation marked `checkpoint`, and pushes and publishes it, keeping the lease.
//
// It is a libvirt client, not the hook: it may call virsh. A kill at any step costs
// nothing the guest wrote: the running top is never touched; a checkpoint is recorded
// only once its layers are published locally, and the bitmap that marks since the last
// recorded one is dropped only after that (the stop cuts the rest with it: remainder.ts).
//   checkpoint:files    empty checkpoint files on each disk's newest layer
//   checkpoint:freeze   QEMU copies what the bitmap marks into them; a new bitmap begins
//   checkpoint:seal     each file that holds anything becomes a layer
//   checkpoint:record   under the domain lock: the generation and the new bitmap's name
//   checkpoint:drop     the old bitmap is dropped
//   checkpoint:push     under the domain lock: pushed...
//   checkpoint:publish  ...and published, as long as the VM runs
import { setPriority } from 'node:os';
import { readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ConflictError, LeaseHeldError } from '../errors.js';
import { layerFileName } from '../file-names.js';
import { createOverlayCommand } from '../qemu-img.js';
import { hasOwnData, layersDirOf, publishAsLayer, removeLeftovers } from '../layers.js';
import { generationId, withDefinition, type LayerInfo } from '../nas/format.js';
import { RATE_UNIT } from '../nas/pace.js';
import { runCommand } from '../runner.js';
import { virshCommand } from '../virsh.js';
import { engineDeps, stateSaver, type SyncDeps } from '../sync/deps.js';
import { logProgress, pushPending } from '../sync/disks.js';
import { domainStateDir, localHead, readLocalState, type LocalState, type PendingGeneration } from '../sync/local-state.js';
import { withLock } from '../lock.js';
import { withDomainLock } from '../sync/session.js';
import { LiveCheckpoints, type FreezeDisk } from './freeze.js';
import { CHECKPOINTING_PREFIX, checkpointName, checkpointedDisks, isOfSession, type CheckpointSession } from './session.js';

/** Where libvirt keeps a running domain's QEMU pid. */
const QEMU_PID_DIR = '/run/libvirt/qemu';
const POLL_MS = 1000;
/** How long to wait for the domain lock to record a checkpoint (a kss command may hold it). */
const RECORD_LOCK_MS = 60_000;
/**
 * The most checkpoints of one session: each adds a layer to the chain that another host
 * (or this one after a crash) starts on, and libvirt refuses a chain deeper than 200.
 * The rest of a longer session goes at its stop.
 */
export const MAX_CHECKPOINTS = 48;
/** How long a checkpoint process waits for the one before it to end. */
const ONE_AT_A_TIME_WAIT_MS = 120_000;

export interface CheckpointDeps extends SyncDeps {
  /** libvirt's connection for virsh. */
  uri: string;
  /** Where QEMU's pid file is (tests). */
  qemuPidDir?: string;
}

/** Runs the checkpoints of session `sessionId` of `domain` until its VM stops. Never throws. */
export async function runCheckpoints(domain: string, sessionId: string, deps: CheckpointDeps): Promise<void> {
  const { config, log } = deps;
  try {
    lowerPriority(log);
    // One process per domain: after a restore the session goes on, and the one before may still be finishing.
    await withLock(join(domainStateDir(config.stateDir, domain), 'checkpoints-lock'), { waitMs: ONE_AT_A_TIME_WAIT_MS }, () => checkpointSession(domain, sessionId, deps));
  } catch (error) {
    log.warn('checkpoints stopped', { error: (error as Error).message });
  }
}

/** The checkpoints of the session, with the process's own lock held. */
async function checkpointSession(domain: string, sessionId: string, deps: CheckpointDeps): Promise<void> {
  const { config, log } = deps;
  const qemu = await waitForQemu(join(deps.qemuPidDir ?? QEMU_PID_DIR, `${domain}.pid`));
  if (qemu === undefined) return log.warn('no checkpoints: the VM is not running');
  const running = () => isAlive(qemu);
  const live = new LiveCheckpoints(domain, { uri: deps.uri, run: deps.run });
  const state = await readLocalState(config.stateDir, domain);
  const session = state.checkpoints;
  if (session?.id !== sessionId) return log.info('no checkpoints: the session is not this one', { session: sessionId });
  const targets = await domainDisks(domain, deps);
  const covered = new Set(checkpointedDisks(state).map(([target]) => target));
  for (const [, top] of checkpointedDisks(state)) await removeLeftovers(layersDirOf(top), CHECKPOINTING_PREFIX);
  // Our checkpoints of earlier sessions name bitmaps these tops do not have; one of this
  // session past the one that marks was made by a run killed before it recorded it.
  for (const name of await live.list()) {
    if (!isOfSession(name, sessionId)) await live.drop(name, { metadataOnly: true });
    else if (name !== session.marking) await live.drop(name);
  }
  if (!(await live.list()).includes(session.marking)) {
    await live.redefine(session.marking, Math.floor(Date.parse(session.began) / 1000), targets.map((target) => ({ target, file: covered.has(target) ? target : undefined })));
  }
  log.info('checkpoints begin', { everySeconds: config.checkpointSeconds, orBytes: config.checkpointBytes });
  let last = { at: Date.now(), bytes: await allocated(state) };
  for (;;) {
    if (!(await waitUntilDue(state, last, config, running))) break;
    if ((await readLocalState(config.stateDir, domain)).checkpoints?.count === MAX_CHECKPOINTS) {
      log.warn(`this session has ${MAX_CHECKPOINTS} checkpoints, the most one may have: the rest goes at the stop`);
      await waitUntilDue(state, { at: Infinity, bytes: Infinity }, config, running);
      break;
    }
    const made = await checkpointOnce(domain, sessionId, live, targets, covered, running, deps).catch(async (error: Error) => {
      log.warn('a checkpoint failed; the next one covers its writes', { error: error.message });
      return 'failed' as const;
    });
    if (made === 'over') break;
    last = { at: Date.now(), bytes: await allocated(await readLocalState(config.stateDir, domain)) };
    if ((await pushCheckpoints(domain, sessionId, running, deps)) === 'taken') {
      log.warn('another host took the VM: no more checkpoints here; its stop keeps this session for kss resolve');
      break;
    }
  }
  // libvirt keeps checkpoint metadata after the VM stops (virsh undefine would refuse it).
  await dropSession(live, sessionId);
  log.info('checkpoints end: the VM stopped');
}

/** Freezes, seals and records one checkpoint; 'over' when the session ended meanwhile. */
async function checkpointOnce(
  domain: string,
  sessionId: string,
  live: LiveCheckpoints,
  targets: string[],
  covered: Set<string>,
  running: () => boolean,
  deps: CheckpointDeps,
): Promise<'made' | 'failed' | 'over'> {
  const { config, log } = deps;
  const engine = engineDeps(deps);
  const state = await readLocalState(config.stateDir, domain);
  const session = state.checkpoints;
  const head = localHead(state);
  if (session?.id !== sessionId || head === null) return 'over';
  const n = session.count + 1;
  const next = checkpointName(sessionId, n);
  const files: Record<string, string> = {};
  engine.onStep?.('checkpoint:files');
  for (const [target, top] of checkpointedDisks(state)) {
    files[target] = join(layersDirOf(top), `${CHECKPOINTING_PREFIX}${sessionId}-${n}.qcow2`);
    await rm(files[target], { force: true });
    await engine.run(createOverlayCommand(files[target], layerFileName(head.disks[target] as string)));
  }
  const removeFiles = async () => {
    for (const file of Object.values(files)) await rm(file, { force: true });
  };
  const frozenAt = new Date();
  try {
    engine.onStep?.('checkpoint:freeze');
    const disks: FreezeDisk[] = targets.map((target) => ({ target, file: covered.has(target) ? files[target] : undefined }));
    await live.freeze(session.marking, next, disks);
  } catch (error) {
    await removeFiles();
    await live.drop(next).catch(() => undefined); // a backup that began and then failed made it
    if (!running()) return 'over';
    log.warn('a checkpoint failed; the next one covers its writes', { error: (error as Error).message });
    return 'failed';
  }
  const disks = { ...head.disks };
  const layers: Record<string, LayerInfo> = {};
  let recorded: boolean;
  try {
    engine.onStep?.('checkpoint:seal');
    for (const [target, file] of Object.entries(files)) {
      if (await hasOwnData(file, engine)) {
        const hash = await publishAsLayer(file, dirname(file), {});
        layers[hash] = { parent: head.disks[target] ?? null, size: (await stat(file)).size };
        disks[target] = hash;
      }
    }
    await removeFiles();
    engine.onStep?.('checkpoint:record');
    recorded = await withDomainLock(config.stateDir, domain, log, RECORD_LOCK_MS, async (lock) => {
      const now = await readLocalState(config.stateDir, domain);
      if (now.checkpoints?.id !== sessionId || now.checkpoints.count !== session.count || !running()) return false;
      const on = localHead(now);
      if (Object.keys(layers).length > 0 && on !== null) {
        const made = { parent: on.id, host: config.host, created: frozenAt.toISOString(), disks, ...withDefinition(on.definition) };
        now.pending.push({ generation: { id: generationId(made), ...made, checkpoint: true }, layers });
      }
      now.checkpoints = { ...now.checkpoints, count: n, marking: next, at: frozenAt.toISOString() } satisfies CheckpointSession;
      await stateSaver(config.stateDir, lock)(now);
      return true;
    });
  } catch (error) {
    await removeFiles();
    await live.drop(next).catch(() => undefined); // `since` still marks everything: the next round covers it
    throw error;
  }
  if (!recorded) {
    await live.drop(next).catch(() => undefined);
    return 'over';
  }
  const seconds = Number(((Date.now() - frozenAt.getTime()) / 1000).toFixed(2)); // the freeze and the seal
  log.info('checkpoint', { n, layers: Object.keys(layers).length, bytes: Object.values(layers).reduce((sum, layer) => sum + layer.size, 0), seconds });
  engine.onStep?.('checkpoint:drop');
  await live.drop(session.marking).catch((error: Error) => log.warn('could not drop the last checkpoint’s bitmap; it costs a little on each write until the VM stops', { error: error.message }));
  return 'made';
}

/**
 * Pushes and publishes the recorded checkpoints, oldest first, keeping the lease; the
 * transfers are stopped as soon as the VM stops (the stop's work pushes what is left).
 * Only checkpoints go: unpushed sessions before them wait for the stop, which merges.
 */
async function pushCheckpoints(domain: string, sessionId: string, running: () => boolean, deps: CheckpointDeps): Promise<'pushed' | 'taken' | 'not now'> {
  const { config, log } = deps;
  return withDomainLock(config.stateDir, domain, log, 0, async (lock) => {
    const save = stateSaver(config.stateDir, lock);
    const state = await readLocalState(config.stateDir, domain);
    if (state.checkpoints?.id !== sessionId || !state.leaseHeld || state.pending.length === 0) return 'not now';
    if (!state.pending.every((pending) => pending.generation.checkpoint)) return 'not now';
    deps.onStep?.('checkpoint:push');
    const repository = deps.openRepository();
    const watch = setInterval(() => {
      if (!running()) void repository.close();
    }, POLL_MS / 2);
    try {
      while (state.pending.length > 0 && running()) {
        const pending = state.pending[0] as PendingGeneration;
        const cap = config.checkpointRateMBps * RATE_UNIT;
        await pushPending({ ...state, pending: [pending] }, config.stateDir, repository, log, deps.progressFor ?? logProgress(log), cap);
        deps.onStep?.('checkpoint:publish');
        const { parent, created, disks, definition } = pending.generation;
        const published = await repository.publishGeneration(domain, { parent, created, disks, ...withDefinition(definition), layers: pending.layers, checkpoint: true }, 'keep');
        state.synced = published;
        state.pending.shift();
        await save(state);
        log.info('checkpoint pushed', { generation: published.id });
      }
      return 'pushed';
    } catch (error) {
      if (error instanceof LeaseHeldError) return 'taken';
      if (!running()) return 'not now';
      if (error instanceof ConflictError) log.warn('the NAS moved on: the checkpoints stay here, and the stop resolves it', { error: error.message });
      else log.warn('could not push a checkpoint; the next one tries again', { error: (error as Error).message });
      return 'not now';
    } finally {
      clearInterval(watch);
      await repository.close();
    }
  }).catch((error: Error) => {
    log.info('checkpoint push skipped', { why: error.message });
    return 'not now' as const;
  });
}

/**
 * Drops libvirt's metadata of the session's checkpoints (the VM stopped: their bitmaps
 * are in the tops, which the stop settles); a new session's are not ours to touch.
 */
async function dropSession(live: LiveCheckpoints, sessionId: string): Promise<void> {
  for (const name of await live.list()) if (isOfSession(name, sessionId)) await live.drop(name, { metadataOnly: true });
}

/** Waits until a checkpoint is due; false when the VM stopped first. */
async function waitUntilDue(state: LocalState, last: { at: number; bytes: number }, config: CheckpointDeps['config'], running: () => boolean): Promise<boolean> {
  for (;;) {
    if (!running()) return false;
    if (Date.now() - last.at >= config.checkpointSeconds * 1000) return true;
    if (config.checkpointBytes > 0 && (await allocated(state)) - last.bytes > config.checkpointBytes) return true;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** Bytes the tops occupy now: they grow as the guest writes new clusters. */
async function allocated(state: LocalState): Promise<number> {
  let bytes = 0;
  for (const [, top] of checkpointedDisks(state)) bytes += ((await stat(top).catch(() => undefined))?.blocks ?? 0) * 512;
  return bytes;
}

/** Every disk target of the running domain (a backup must name each one). */
async function domainDisks(domain: string, deps: CheckpointDeps): Promise<string[]> {
  const { stdout } = await (deps.run ?? runCommand)(virshCommand(deps.uri, 'domblklist', domain, '--details'), { timeoutMs: 30_000 });
  return stdout
    .split('\n')
    .map((line) => line.trim().split(/\s+/u))
    .filter((fields) => fields.length >= 3 && (fields[1] === 'disk' || fields[1] === 'cdrom' || fields[1] === 'floppy' || fields[1] === 'lun'))
    .map((fields) => fields[2] as string);
}

/** The QEMU pid libvirt wrote for the domain, waited for a little (the hook may come first). */
async function waitForQemu(pidFile: string): Promise<number | undefined> {
  for (let tries = 0; tries < 30; tries += 1) {
    const pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
    if (Number.isSafeInteger(pid) && pid > 1 && isAlive(pid)) return pid;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Nice 19 and the lowest best-effort I/O class: the guest comes first (children inherit both). */
function lowerPriority(log: CheckpointDeps['log']): void {
  try {
    setPriority(19);
  } catch (error) {
    log.warn('could not lower the checkpoints’ CPU priority', { error: (error as Error).message });
  }
  void runCommand({ file: 'ionice', args: ['-c', '2', '-n', '7', '-p', String(process.pid)] }).catch((error: Error) =>
    log.warn('could not lower the checkpoints’ I/O priority', { error: error.message }),
  );
}

