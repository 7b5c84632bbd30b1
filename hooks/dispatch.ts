// Which hook calls we act on. Everything not in this table exits 0 at once, before
// stdin is even read: libvirt calls the hook for every operation of every domain.
import type { Config } from '../lib/config.js';
import type { DomainRecord } from '../lib/domain-xml.js';
import type { Logger } from '../lib/log.js';

export interface HookContext {
  /** The domain, from the XML on stdin (internal calls: its name only, no disks). */
  domain: DomainRecord;
  /** The XML on stdin, as libvirt gave it ('' for internal calls). */
  xml: string;
  op: string;
  subop: string;
  extra: string;
  config: Config;
  log: Logger;
}

export type HookHandler = (context: HookContext) => Promise<void>;

export interface HookEntry {
  /**
   * Whether a failure exits non-zero. Only in prepare does that mean something (libvirt
   * aborts the start and shows our stderr); elsewhere a non-zero exit is ignored at
   * best, and in `reconnect` it would kill a running VM.
   */
  failureAbortsStart: boolean;
  /** Started by this program itself, not by libvirt: no domain XML on stdin. */
  internal?: boolean;
  /** Loads the handler on demand, so that the hook loads only what the call needs. */
  load: () => Promise<HookHandler>;
}

/** The background work after a stop: the release handler starts it with this operation. */
export const FINISH_STOP_OP = 'kss-finish-stop';

/** The checkpoints of a running session: the started handler starts them with this operation. */
export const CHECKPOINTS_OP = 'kss-checkpoints';

/** The background work after a start refused for a newer definition (hooks/prepare.ts). */
export const APPLY_DEFINITION_OP = 'kss-apply-definition';

const TABLE: Record<string, HookEntry> = {
  'prepare/begin': { failureAbortsStart: true, load: async () => (await import('./prepare.js')).prepareBegin },
  'release/end': { failureAbortsStart: false, load: async () => (await import('./release.js')).releaseEnd },
  'started/begin': { failureAbortsStart: false, load: async () => (await import('./started.js')).startedBegin },
  [`${CHECKPOINTS_OP}/begin`]: {
    failureAbortsStart: false,
    internal: true,
    load: async () => (await import('./checkpoints.js')).checkpointsBegin,
  },
  'restore/begin': { failureAbortsStart: false, load: async () => (await import('./restore.js')).restoreBegin },
  [`${FINISH_STOP_OP}/begin`]: {
    failureAbortsStart: false,
    internal: true,
    load: async () => (await import('./finish-stop.js')).finishStopBegin,
  },
  [`${APPLY_DEFINITION_OP}/begin`]: {
    failureAbortsStart: false,
    internal: true,
    load: async () => (await import('./apply-definition.js')).applyDefinitionBegin,
  },
};

/** The entry for a hook call, or undefined when the call is not ours to handle. */
export function findHookEntry(op: string | undefined, subop: string | undefined): HookEntry | undefined {
  return Object.hasOwn(TABLE, `${op}/${subop}`) ? TABLE[`${op}/${subop}`] : undefined;
}
