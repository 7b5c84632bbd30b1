import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Lease } from '../../../lib/nas/format.js';
import { decideStart, decideStop, publishedPending, type LocalView, type NasView, type StartDecision, type StartFlags, type StopDecision } from '../../../lib/sync/decide.js';

const ME = 'desk';
const mine = { host: ME, since: '2026-11-21T08:00:00Z' };
const theirs = { host: 'laptop', since: '2026-11-21T09:00:00Z' };

const local = (synced: string | null, pending: number, leaseHeld = false): LocalView => ({ synced, pending, leaseHeld });
const up = (head: string | null, lease: Lease | null = null): NasView => ({ reachable: true, head, lease });
const down: NasView = { reachable: false, problem: 'no route to host' };
const flags = (over: Partial<StartFlags> = {}): StartFlags => ({ skipSync: false, stealLease: false, restoring: false, ...over });

describe('decideStart', () => {
  const rows: Array<[string, LocalView, NasView, StartFlags, StartDecision]> = [
    // Up to date, behind, ahead, both.
    ['in step', local('g1', 0), up('g1'), flags(), { action: 'sync', push: false, pull: false, stealFrom: undefined }],
    ['in step, our lease', local('g1', 0, true), up('g1', mine), flags(), { action: 'sync', push: false, pull: false, stealFrom: undefined }],
    ['NAS ahead', local('g1', 0), up('g2'), flags(), { action: 'sync', push: false, pull: true, stealFrom: undefined }],
    ['NAS ahead of a host that never synced', local(null, 0), up('g2'), flags(), { action: 'sync', push: false, pull: true, stealFrom: undefined }],
    ['we are ahead', local('g1', 2), up('g1'), flags(), { action: 'sync', push: true, pull: false, stealFrom: undefined }],
    ['both moved', local('g1', 1), up('g2'), flags(), { action: 'refuse', why: 'conflict', nasHead: 'g2' }],
    ['both moved, never synced', local(null, 1), up('g2'), flags(), { action: 'refuse', why: 'conflict', nasHead: 'g2' }],
    ['first push of a new domain', local(null, 1), up(null), flags(), { action: 'sync', push: true, pull: false, stealFrom: undefined }],
    ['nothing anywhere', local(null, 0), up(null), flags(), { action: 'refuse', why: 'not-enabled' }],
    // The lease.
    ['lease held elsewhere', local('g1', 0), up('g1', theirs), flags(), { action: 'refuse', why: 'lease-held', lease: theirs }],
    ['lease held elsewhere, NAS ahead', local('g1', 0), up('g2', theirs), flags(), { action: 'refuse', why: 'lease-held', lease: theirs }],
    ['lease stolen on purpose', local('g1', 0), up('g2', theirs), flags({ stealLease: true }), { action: 'sync', push: false, pull: true, stealFrom: theirs }],
    ['stealing does not hide a conflict', local('g1', 1), up('g2', theirs), flags({ stealLease: true }), { action: 'refuse', why: 'conflict', nasHead: 'g2' }],
    // Offline.
    ['offline, lease held here', local('g1', 1, true), down, flags(), { action: 'start-local', why: 'offline-with-lease', problem: 'no route to host' }],
    ['offline, no lease', local('g1', 0), down, flags(), { action: 'refuse', why: 'offline', problem: 'no route to host' }],
    // Flags.
    ['skip sync', local('g1', 1), up('g2', theirs), flags({ skipSync: true }), { action: 'start-local', why: 'skip-sync' }],
    ['skip sync offline', local('g1', 0), down, flags({ skipSync: true }), { action: 'start-local', why: 'skip-sync' }],
    ['restoring a saved image', local('g1', 1), up('g2'), flags({ restoring: true, skipSync: true }), { action: 'leave-disks', why: 'restoring' }],
  ];
  for (const [name, l, nas, f, expected] of rows) {
    it(name, () => assert.deepEqual(decideStart(ME, l, nas, f), expected));
  }
});

describe('decideStop', () => {
  const rows: Array<[string, LocalView, NasView, boolean, StopDecision]> = [
    ['push and give the lease back', local('g1', 1, true), up('g1', mine), false, { action: 'push', releaseLease: true }],
    ['push with no lease held', local('g1', 1), up('g1'), false, { action: 'push', releaseLease: false }],
    ['nothing written: give the lease back', local('g1', 0, true), up('g1', mine), false, { action: 'nothing', releaseLease: true }],
    ['nothing written, no lease', local('g1', 0), up('g1'), false, { action: 'nothing', releaseLease: false }],
    ['no push asked', local('g1', 1, true), up('g1', mine), true, { action: 'keep-pending', why: 'no-push', detail: 'kss stop --no-push: the lease stays here' }],
    ['offline', local('g1', 1, true), down, false, { action: 'keep-pending', why: 'offline', detail: 'no route to host' }],
    ['someone else runs it', local('g1', 1), up('g1', theirs), false, { action: 'keep-pending', why: 'lease-held-elsewhere', detail: 'host laptop has it since 2026-11-21T09:00:00Z' }],
    ['the NAS moved meanwhile', local('g1', 1), up('g2'), false, { action: 'keep-pending', why: 'conflict', detail: 'the NAS head moved to g2' }],
    ['first push', local(null, 1, true), up(null, mine), false, { action: 'push', releaseLease: true }],
  ];
  for (const [name, l, nas, noPush, expected] of rows) {
    it(name, () => assert.deepEqual(decideStop(ME, l, nas, { noPush }), expected));
  }
});

describe('publishedPending', () => {
  const rows: Array<[string, string[], string[], number]> = [
    ['nothing pending', [], ['g1'], 0],
    ['the NAS has none of them', ['p1', 'p2'], ['g1', 'g0'], 0],
    ['an empty NAS', ['p1'], [], 0],
    ['a push that went through before its recording was interrupted', ['p1'], ['p1', 'g1'], 1],
    ['the older of two', ['p1', 'p2'], ['p1', 'g1'], 1],
    ['both', ['p1', 'p2'], ['p2', 'p1', 'g1'], 2],
    ['and the other host built on it since', ['p1'], ['g3', 'g2', 'p1', 'g1'], 1],
  ];
  for (const [name, pending, headLine, count] of rows) it(name, () => assert.equal(publishedPending(pending, new Set(headLine)), count));
});
