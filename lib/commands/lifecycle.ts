// `kss start`, `kss stop`, `kss push`, `kss pull`, `kss resolve`, `kss rollback`,
// `kss gc`: the person's hand on the lifecycle. start and stop are virsh around one-shot
// flags that the hook consumes.
import { readConfig, type Config } from '../config.js';
import { ConflictError, DiskStateError, LeaseHeldError, NasUnreachableError, UsageError } from '../errors.js';
import { Logger, streamSink } from '../log.js';
import type { Generation } from '../nas/format.js';
import { openRepository } from '../nas/open.js';
import { runCommand } from '../runner.js';
import { barProgress, pullGeneration } from '../sync/disks.js';
import { readLastEvent, readLocalState, setFlag, takeFlag, type Flag } from '../sync/local-state.js';
import { withDomainLock } from '../sync/session.js';
import { attachStateVolumes, stateSourcesOf } from '../sync/state-volumes.js';
import { managedSaveIdentity } from '../sync/managed-save.js';
import { retentionPolicy } from '../nas/retention.js';
import { finishStop, type KeptWhy } from '../sync/stop.js';
import { resolveConflict, rollback, type Keep } from '../sync/resolve.js';
import type { SyncDeps } from '../sync/deps.js';
import { libvirtUri, virshCommand } from '../virsh.js';
import { definedDomain, libvirtDefinitions, requireShutOff } from './libvirt-domain.js';
import type { Output } from './output.js';

export interface CommandContext extends Output {
  configFile: string;
  env: NodeJS.ProcessEnv;
}

async function syncDeps(context: CommandContext, level: 'info' | 'warn' = 'info'): Promise<SyncDeps> {
  const config = await readConfig(context.configFile);
  const log = new Logger([streamSink(context.stderr, level)]);
  return { config, log, openRepository: () => openRepository(config, log), libvirt: libvirtDefinitions(context.env) };
}

/** Runs virsh with one-shot flags set for the hook; flags the hook did not take are removed. */
async function withFlags(context: CommandContext, domain: string, flags: Flag[], args: string[]): Promise<void> {
  const { config } = await syncDeps(context);
  for (const flag of flags) await setFlag(config.stateDir, domain, flag);
  let reached = false;
  try {
    const { stdout } = await runCommand(virshCommand(libvirtUri(context.env), ...args));
    reached = true;
    context.stdout.write(stdout);
  } finally {
    // A start or stop that never reached the hook (virsh failed: the VM was off already)
    // must not leave a flag for a later one; a start's hook has taken its flags by now.
    if (args[0] === 'start' || !reached) for (const flag of flags) await takeFlag(config.stateDir, domain, flag);
  }
}

/** `kss start VM [--no-sync] [--steal-lease]` */
export async function startCommand(o: { domain: string; noSync: boolean; stealLease: boolean }, context: CommandContext): Promise<void> {
  const flags: Flag[] = [...(o.noSync ? (['skip-sync'] as const) : []), ...(o.stealLease ? (['steal-lease'] as const) : [])];
  await withFlags(context, o.domain, flags, ['start', o.domain]);
}

/** `kss stop VM [--no-push] [--force]`: shuts down (or destroys) and waits until it is off. */
export async function stopCommand(o: { domain: string; noPush: boolean; force: boolean; timeoutSeconds: number }, context: CommandContext): Promise<void> {
  await withFlags(context, o.domain, o.noPush ? ['no-push'] : [], [o.force ? 'destroy' : 'shutdown', o.domain]);
  const uri = libvirtUri(context.env);
  const deadline = Date.now() + o.timeoutSeconds * 1000;
  for (;;) {
    const { stdout } = await runCommand(virshCommand(uri, 'domstate', o.domain));
    if (stdout.trim() === 'shut off') break;
    if (Date.now() > deadline) {
      throw new UsageError(`${o.domain} is still ${stdout.trim()} after ${o.timeoutSeconds} s: the guest did not shut down`, {
        remedy: `kss stop ${o.domain} --force (like pulling the plug)`,
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  context.stderr.write(`kss: ${o.domain} is off; ${o.noPush ? 'its changes stay on this host (no push)' : 'its changes are being pushed in the background (kss log)'}\n`);
}

/**
 * Fails, with `remedy`, unless libvirt has the domain shut off, and returns the domain's
 * latest event as it was before libvirt was asked: work that then takes the domain lock
 * must find it unchanged, or a start came in between and the VM runs on the disks.
 * (The CLI asks libvirt before taking the lock: a virsh call about the domain blocks
 * while its hook runs, and the hook may be waiting for that lock.)
 */
export async function shutOffSince(domain: string, context: CommandContext, remedy: string): Promise<string | null> {
  const config = await readConfig(context.configFile);
  const latest = await readLastEvent(config.stateDir, domain);
  await requireShutOff(domain, context.env, remedy);
  // Shut off, but saved: the memory image refers to the disks exactly as they are.
  if ((await managedSaveIdentity(domain)) !== undefined) {
    throw new UsageError(`${domain} has a managed-save image (its saved memory refers to its disks exactly as they are); nothing was changed`, {
      remedy: `start it (it resumes where it was) and shut it down, then run the command again; or drop the saved memory: virsh managedsave-remove ${domain}`,
    });
  }
  return latest?.id ?? null;
}

/** `kss resolve VM --keep local|remote` */
export async function resolveCommand(o: { domain: string; keep: Keep }, context: CommandContext): Promise<void> {
  const after = await shutOffSince(o.domain, context, `shut it down first (kss stop ${o.domain})`);
  const deps = await syncDeps(context);
  const { head, branch } = await resolveConflict(o.domain, o.keep, deps, after);
  context.stdout.write(`${o.domain}: kept ${o.keep}; head ${head.slice(0, 12)}; the other side is branch ${branch}\n`);
  await definitionInPlace(o.domain, deps, context);
}

/** Puts the definition of the head this host is now on in place (the whole machine moves together), and says so when it changed. */
async function definitionInPlace(domain: string, deps: SyncDeps, context: CommandContext): Promise<void> {
  const { putDefinitionInPlace } = await import('../sync/definitions.js');
  const put = await putDefinitionInPlace(domain, { ...deps, libvirt: deps.libvirt ?? libvirtDefinitions(context.env) });
  if (put?.changed) context.stdout.write(`${domain}: the definition of generation ${put.generation.id.slice(0, 12)} (from host ${put.generation.host}) is in place here\n`);
}

/** `kss rollback VM --to GEN|BRANCH` */
export async function rollbackCommand(o: { domain: string; to: string }, context: CommandContext): Promise<void> {
  const after = await shutOffSince(o.domain, context, `shut it down first (kss stop ${o.domain})`);
  const deps = await syncDeps(context);
  const generation = await rollback(o.domain, o.to, deps, after);
  context.stdout.write(`${o.domain}: disks as at ${o.to}, as new generation ${generation.id.slice(0, 12)}\n`);
  await definitionInPlace(o.domain, deps, context);
}

/** `kss gc VM [--dry-run]`: applies retention on the NAS (old generations, unneeded layers), or says what it would do. */
export async function gcCommand(o: { domain: string; dryRun: boolean }, context: CommandContext): Promise<void> {
  const { config, openRepository: open } = await syncDeps(context);
  const repository = open();
  const result = await repository
    .collectGarbage(o.domain, retentionPolicy(config), { dryRun: o.dryRun })
    .finally(() => repository.close());
  const later = result.droppedLayers.filter((hash) => !result.removedLayers.includes(hash));
  const counts = `${result.droppedGenerations.length} generation(s), ${result.droppedBranches.length} branch(es), ${result.removedLayers.length} layer file(s)${later.length > 0 ? ` (and ${later.length} more a day after they left the manifest: a host may be fetching them)` : ''}`;
  if (!o.dryRun) return void context.stdout.write(`${o.domain}: removed ${counts}\n`);
  const lines = [
    `${o.domain}: would remove ${counts}; nothing was changed`,
    ...result.droppedGenerations.map((id) => `  generation ${id.slice(0, 12)}`),
    ...result.droppedBranches.map((name) => `  branch ${name}`),
    ...result.removedLayers.map((hash) => `  layer ${hash}`),
    ...later.map((hash) => `  layer ${hash} (later)`),
  ];
  context.stdout.write(`${lines.join('\n')}\n`);
}

/**
 * `kss push VM`: what the background work after a stop does (seal, merge, push, give
 * the lease back, compact), by hand and with progress; the VM must be shut off. Fails
 * when something stays unpushed, saying why.
 */
export async function pushCommand(o: { domain: string }, context: CommandContext): Promise<void> {
  const after = await shutOffSince(o.domain, context, `shut it down (kss stop ${o.domain}); that pushes by itself`);
  const pushed = await pushHere(o.domain, context, after);
  context.stdout.write(`${o.domain}: ${pushed.outcome}\n`);
  if (pushed.pending > 0) throw notPushed(o.domain, pushed);
}

/** Why pending generations stayed here, as the error whose exit code says it (a conflict is 9, as the README promises). */
function notPushed(domain: string, pushed: { outcome: string; pending: number; kept: KeptWhy | undefined }): Error {
  const message = `${pushed.pending} generation(s) of ${domain} are still not on the NAS: ${pushed.outcome}`;
  switch (pushed.kept) {
    case 'conflict':
      return new ConflictError(message, { remedy: `choose which side to keep (the other is kept as a branch): kss resolve ${domain} --keep local, or kss resolve ${domain} --keep remote` });
    case 'offline':
      return new NasUnreachableError(message, { remedy: `bring the NAS back (kss doctor says what fails), then kss push ${domain}` });
    case 'lease-held-elsewhere':
      return new LeaseHeldError(message, { remedy: `the other host has it: shut it down there, then kss push ${domain} here (if both changed it, kss resolve then chooses)` });
    default:
      return new DiskStateError(message, { remedy: `kss status ${domain} and kss log ${domain} tell why` });
  }
}

/**
 * Runs the work after a stop by hand, with a progress bar (the definition is captured
 * with the disks: lib/sync/stop.ts). Returns how it ended, what is still unpushed, the
 * generation the disks are now in step with on the NAS, and the configuration it used.
 */
export async function pushHere(
  domain: string,
  context: CommandContext,
  after: string | null,
): Promise<{ outcome: string; kept: KeptWhy | undefined; pending: number; synced: Generation | null; config: Config }> {
  const deps = await syncDeps(context, 'warn'); // the bars show the progress
  const stopped = await finishStop(domain, { ...deps, progressFor: barProgress(context.stderr) }, after, { byHand: true });
  if (stopped.superseded) {
    throw new UsageError(`${domain} was started while this command waited (the latest event is ${stopped.latest}): its disks are in use, nothing was sealed`, {
      remedy: `shut it down (kss stop ${domain}): its changes are pushed then`,
    });
  }
  const state = await readLocalState(deps.config.stateDir, domain);
  return { outcome: stopped.outcome, kept: stopped.kept, pending: state.pending.length, synced: state.synced, config: deps.config };
}

/**
 * `kss pull VM`: puts the NAS's newest definition in place (lib/sync/definitions.ts),
 * then fetches and verifies the layers of the NAS's newest generation that this host
 * lacks, with progress, so that the next start has nothing to download or define. The
 * disks are not changed: the start puts them on it.
 */
export async function pullCommand(o: { domain: string }, context: CommandContext): Promise<void> {
  const deps = await syncDeps(context);
  const { config, log } = deps;
  const { syncedDisks } = await import('../domain-xml.js');
  await definitionInPlace(o.domain, deps, context); // first: it may bring another disk
  const defined = await definedDomain(o.domain, context.env);
  const disks = Object.fromEntries(syncedDisks(defined).map((disk) => [disk.target, disk.path as string]));
  await withDomainLock(config.stateDir, o.domain, log, 60_000, async () => {
    const state = { ...(await readLocalState(config.stateDir, o.domain)), disks };
    attachStateVolumes(state, stateSourcesOf(defined, config.swtpmDir), config.stateDir);
    const repository = openRepository(config, log);
    try {
      const manifest = await repository.readManifest(o.domain);
      const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
      if (!manifest || !head) throw new DiskStateError(`the NAS has nothing for ${o.domain}`, { remedy: `kss enable ${o.domain} on the host that has it` });
      await pullGeneration(state, manifest, head, repository, log, barProgress(context.stderr));
      context.stdout.write(`${o.domain}: generation ${head.id.slice(0, 12)} from ${head.host} (${head.created}) is here; the next start uses it\n`);
    } finally {
      await repository.close();
    }
  });
}
