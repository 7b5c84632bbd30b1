// What to do at a start and after a stop, from this host's state, the NAS's state, the
// lease and the one-shot flags. Pure: every case is a row of a table test.
//
// The rule that keeps every byte: a conflict is exactly "this host has generations the
// NAS lacks (pending) and the NAS head moved away from the one this host last synced
// with". With nothing pending, taking the NAS head loses nothing, however far it moved.
import type { Lease } from '../nas/format.js';

export interface LocalView {
  /** The NAS generation this host's disks were last in step with. */
  synced: string | null;
  /** Sealed generations not on the NAS yet. */
  pending: number;
  /** This host took the lease and has not given it back. */
  leaseHeld: boolean;
}

export type NasView =
  | { reachable: false; problem: string }
  | { reachable: true; head: string | null; lease: Lease | null };

export interface StartFlags {
  /** One start without the NAS (kss start VM --no-sync). */
  skipSync: boolean;
  /** Take the lease from another host (kss start VM --steal-lease). */
  stealLease: boolean;
  /** The start restores a saved memory image: the disks must stay exactly as saved. */
  restoring: boolean;
}

export type StartDecision =
  | { action: 'leave-disks'; why: 'restoring' }
  | { action: 'start-local'; why: 'skip-sync' | 'offline-with-lease'; problem?: string }
  | { action: 'sync'; push: boolean; pull: boolean; stealFrom: Lease | undefined }
  | { action: 'refuse'; why: 'offline'; problem: string }
  | { action: 'refuse'; why: 'lease-held'; lease: Lease }
  | { action: 'refuse'; why: 'conflict'; nasHead: string | null }
  | { action: 'refuse'; why: 'not-enabled' };

/** Decides what prepare does before a start. */
export function decideStart(host: string, local: LocalView, nas: NasView, flags: StartFlags): StartDecision {
  if (flags.restoring) return { action: 'leave-disks', why: 'restoring' };
  if (flags.skipSync) return { action: 'start-local', why: 'skip-sync' };
  if (!nas.reachable) {
    // Only the lease holder can be sure nobody else moved on meanwhile.
    return local.leaseHeld
      ? { action: 'start-local', why: 'offline-with-lease', problem: nas.problem }
      : { action: 'refuse', why: 'offline', problem: nas.problem };
  }
  const other = nas.lease !== null && nas.lease.host !== host ? nas.lease : undefined;
  if (other && !flags.stealLease) return { action: 'refuse', why: 'lease-held', lease: other };
  if (nas.head === null) {
    return local.pending > 0 ? { action: 'sync', push: true, pull: false, stealFrom: other } : { action: 'refuse', why: 'not-enabled' };
  }
  if (nas.head === local.synced) return { action: 'sync', push: local.pending > 0, pull: false, stealFrom: other };
  if (local.pending > 0) return { action: 'refuse', why: 'conflict', nasHead: nas.head };
  return { action: 'sync', push: false, pull: true, stealFrom: other };
}

export type StopDecision =
  | { action: 'nothing'; releaseLease: boolean }
  | { action: 'push'; releaseLease: boolean }
  | { action: 'keep-pending'; why: 'no-push' | 'lease-held-elsewhere' | 'offline' | 'conflict'; detail: string };

/** Decides what the background work after a stop does with pending generations and the lease. */
export function decideStop(host: string, local: LocalView, nas: NasView, flags: { noPush: boolean }): StopDecision {
  if (flags.noPush) return { action: 'keep-pending', why: 'no-push', detail: 'kss stop --no-push: the lease stays here' };
  if (!nas.reachable) return { action: 'keep-pending', why: 'offline', detail: nas.problem };
  const ours = nas.lease?.host === host;
  if (nas.lease !== null && !ours) {
    // Pushing now would hand the host that runs the VM a conflict when it stops.
    return { action: 'keep-pending', why: 'lease-held-elsewhere', detail: `host ${nas.lease.host} has it since ${nas.lease.since}` };
  }
  if (local.pending === 0) return { action: 'nothing', releaseLease: ours };
  if (nas.head !== local.synced) {
    return { action: 'keep-pending', why: 'conflict', detail: `the NAS head moved to ${nas.head?.slice(0, 12) ?? 'nothing'}` };
  }
  return { action: 'push', releaseLease: ours };
}

/**
 * How many of the pending generations (ids, oldest first; each one's parent is the one
 * before) the NAS already has in its head's history (`headLine`: the head and its
 * ancestors): a publish that went through but whose recording here was interrupted (a
 * kill right after the compare-and-swap), maybe built on since by the other host.
 * Without this, the next start would take its own push for a conflict.
 */
export function publishedPending(pending: readonly string[], headLine: ReadonlySet<string>): number {
  for (let index = pending.length - 1; index >= 0; index -= 1) if (headLine.has(pending[index] as string)) return index + 1;
  return 0;
}
