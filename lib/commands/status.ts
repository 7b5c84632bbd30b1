// `kss status [VM]`, `kss wait VM` and `kss delta VM`.
import { readConfig } from '../config.js';
import { ConflictError, DiskStateError, LeaseHeldError, LockedError, NasUnreachableError } from '../errors.js';
import { isLocked } from '../lock.js';
import { openRepository } from '../nas/open.js';
import { formatBytes } from '../progress.js';
import { measureDelta } from '../sync/delta.js';
import { domainLockPath, hasFlag, readLocalState } from '../sync/local-state.js';
import { domainStatus, knownDomains, type DomainStatus } from '../sync/status.js';
import type { Lease } from '../nas/format.js';
import type { CommandContext } from './lifecycle.js';
import { runsHere } from './libvirt-domain.js';
import { printJson } from './output.js';

/** How long a stop's background work may take to start before kss wait calls it lost. */
const STOP_WORK_GRACE_MS = 15_000;

const STATE_TEXT: Record<DomainStatus['state'], string> = {
  synced: 'synced',
  behind: 'behind (the NAS is newer)',
  ahead: 'ahead (push pending)',
  conflict: 'conflict (kss resolve)',
  'not-enabled': 'not enabled',
  offline: 'offline (NAS unreachable)',
};

/** How a status reads in one phrase: what is happening first, then where it stands. */
export function describeStatus(s: DomainStatus, host: string): string {
  const parts = [s.busy ? 'busy: syncing now (kss log)' : STATE_TEXT[s.state]];
  if (s.lease && s.lease.host !== host) parts.push(`checked out by ${s.lease.host} since ${s.lease.since}`);
  if (s.lease?.host === host) parts.push('checked out here');
  return parts.join('; ');
}

/**
 * Which host the VM runs on: this one when libvirt here says so (`runsHere`; undefined:
 * libvirt could not be asked), else the lease's host (the one that started it last and
 * has not pushed its stop), or null: nowhere.
 */
export function runsOn(lease: Lease | null, host: string, runsHere: boolean | undefined): string | null {
  if (runsHere === true) return host;
  if (lease === null || (lease.host === host && runsHere === false)) return null;
  return lease.host;
}

/** Where the VM runs, in a phrase. */
export function runsLine(domain: string, where: string | null, lease: Lease | null, host: string): string {
  if (where === host) return `runs here (kss view ${domain} shows its screen)`;
  if (where !== null) return `runs on ${where}, which has it checked out (kss view ${domain} shows its screen)`;
  if (lease?.host === host) return 'runs nowhere: shut off here, still checked out here (stopped with --no-push)';
  return 'runs nowhere (no host has it checked out)';
}

/** What the NAS head is when it is a checkpoint: whose, and how old. */
export function checkpointLine(checkpoint: { host: string; at: string }, host: string, now = Date.now()): string {
  const minutes = Math.max(0, Math.round((now - Date.parse(checkpoint.at)) / 60_000));
  const age = minutes < 1 ? 'less than a minute' : minutes === 1 ? '1 minute' : minutes < 120 ? `${minutes} minutes` : `${Math.round(minutes / 60)} hours`;
  const whose = checkpoint.host === host ? 'here' : `on ${checkpoint.host}`;
  return `the NAS has a checkpoint of the VM running ${whose}, ${age} old (${checkpoint.at}): what a power cut then would have left`;
}

/** `kss status [VM] [--json]` */
export async function statusCommand(o: { domain: string | undefined; json: boolean }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const domains = o.domain !== undefined ? [o.domain] : await knownDomains(config);
  const repository = openRepository(config);
  try {
    const statuses: Array<DomainStatus & { runsOn: string | null }> = [];
    for (const domain of domains) {
      const s = await domainStatus(domain, config, repository);
      // While a hook holds the domain lock, a virsh call about the domain would wait for it.
      statuses.push({ ...s, runsOn: runsOn(s.lease, config.host, s.busy ? undefined : await runsHere(domain, context.env, 10_000).catch(() => undefined)) });
    }
    if (o.json) return printJson(context, statuses);
    if (statuses.length === 0) {
      context.stderr.write('kss: no domain is managed on this host yet (kss enable VM)\n');
      return;
    }
    for (const s of statuses) {
      const short = (id: string | null) => (id === null ? 'none' : id.slice(0, 12));
      const layers = Object.entries(s.layers).map(([disk, n]) => `${disk} ${n}`).join(', ') || '-';
      context.stdout.write(
        `${s.domain}: ${describeStatus(s, config.host)}\n  ${runsLine(s.domain, s.runsOn, s.lease, config.host)}\n  here ${short(s.localHead)}${s.pending > 0 ? ` (${s.pending} not on the NAS)` : ''}, NAS ${s.state === 'offline' ? '?' : short(s.nasHead)}; layers: ${layers}${s.lastSync ? `; last: ${s.lastSync.outcome} at ${s.lastSync.at}` : ''}\n` +
          `  to push ${formatBytes(s.delta.push.bytes)}${s.delta.tops.bytes > 0 ? ` (+ ${formatBytes(s.delta.tops.bytes)} in the tops)` : ''}, to pull ${s.state === 'offline' ? '?' : formatBytes(s.delta.pull.bytes)}\n` +
          `  uses ${formatBytes(s.bytes.here)} here, ${s.bytes.nas === null ? '?' : formatBytes(s.bytes.nas)} on the NAS\n` +
          (s.checkpoint ? `  ${checkpointLine(s.checkpoint, config.host)}\n` : '') +
          (s.progress ? `  now: ${s.progress}\n` : ''),
      );
    }
  } finally {
    await repository.close();
  }
}

/**
 * `kss wait VM [--timeout S]`: waits until no sync work runs for the domain, then
 * succeeds when nothing of this host's is missing on the NAS and the VM is not checked
 * out here (the other host can start it: safe to switch machines), and fails with the
 * reason otherwise.
 */
export async function waitCommand(o: { domain: string; timeoutSeconds: number }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const deadline = Date.now() + o.timeoutSeconds * 1000;
  // Busy: the lock is held, or a stop's background work has not taken it yet.
  let idleSince = Date.now();
  for (;;) {
    const locked = await isLocked(domainLockPath(config.stateDir, o.domain));
    if (locked) idleSince = Date.now();
    else if (!(await hasFlag(config.stateDir, o.domain, 'stopping'))) break;
    else if (Date.now() - idleSince > STOP_WORK_GRACE_MS) {
      throw new DiskStateError(`the work after ${o.domain}'s last stop did not run`, { remedy: `kss log ${o.domain} may tell why; kss push ${o.domain} does it now` });
    }
    if (Date.now() > deadline) {
      throw new LockedError(`${o.domain} is still syncing after ${o.timeoutSeconds} s`, { remedy: `kss log ${o.domain} shows what it does; wait longer with --timeout` });
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  const repository = openRepository(config);
  const s = await domainStatus(o.domain, config, repository).finally(() => repository.close());
  context.stdout.write(`${o.domain}: ${describeStatus(s, config.host)}\n`);
  switch (s.state) {
    case 'offline':
      throw new NasUnreachableError(`cannot tell whether ${o.domain} is on the NAS: ${s.problem}`, { remedy: 'check the network and the NAS, then run kss wait again' });
    case 'conflict':
      throw new ConflictError(`${o.domain} has changes here and on the NAS`, { remedy: `kss resolve ${o.domain} --keep local|remote` });
    case 'ahead':
      throw new DiskStateError(`${s.pending} generation(s) of ${o.domain} are not on the NAS yet (last: ${s.lastSync?.outcome ?? 'never synced'})`, {
        remedy: `start and shut down ${o.domain} once with the NAS reachable (that pushes them); kss log ${o.domain} tells why the last push did not happen`,
      });
    case 'not-enabled':
      throw new DiskStateError(`${o.domain} is not managed on this host`, { remedy: `kss enable ${o.domain}` });
    default:
      if (s.lease?.host === config.host) {
        throw new LeaseHeldError(`${o.domain} is checked out here (it runs, or was stopped with --no-push): the other host cannot start it`, {
          remedy: `shut it down (kss stop ${o.domain}); its changes then go to the NAS`,
        });
      }
  }
}

/** `kss delta VM [--json]`: what would move, in bytes, each way. */
export async function deltaCommand(o: { domain: string; json: boolean }, context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  const state = await readLocalState(config.stateDir, o.domain);
  if (state.synced === null && state.pending.length === 0) throw new DiskStateError(`${o.domain} is not managed on this host`, { remedy: `kss enable ${o.domain}, or kss clone ${o.domain} when another host has it on the NAS` });
  const repository = openRepository(config);
  const manifest = await repository.readManifest(o.domain).finally(() => repository.close());
  const delta = await measureDelta(state, manifest);
  if (o.json) return printJson(context, delta);
  const layers = (n: number) => `${n} layer${n === 1 ? '' : 's'}`;
  context.stdout.write(`${o.domain}: to push ${formatBytes(delta.push.bytes)} (${layers(delta.push.layers)}); written since the last stop, pushed after the next one: ${formatBytes(delta.tops.bytes)}\n`);
  const without = delta.pull.withoutMerged;
  const instead = without === null ? 'the NAS no longer has all the layers they stand for' : `the layers themselves: ${formatBytes(without.bytes)} in ${layers(without.layers)}`;
  const merged = delta.pull.merged > 0 ? `, ${delta.pull.merged} of them merged, instead of ${instead}` : '';
  context.stdout.write(`${o.domain}: to pull ${formatBytes(delta.pull.bytes)} (${layers(delta.pull.layers)}${merged})\n`);
}

/** `kss domains` (hidden): the domains managed here, one a line, for shell completion; never asks the NAS. */
export async function domainsCommand(context: CommandContext): Promise<void> {
  const config = await readConfig(context.configFile);
  for (const domain of await knownDomains(config)) context.stdout.write(`${domain}\n`);
}
