// The stall deadline of layer streams, for both transports (the configuration's
// stallSeconds): when a stream counts as stalled, and what the person is told. Pure.
import { NasUnreachableError } from '../errors.js';

/** 'moving'; 'stalled': nothing moved, nor did the NAS say it was busy, for the deadline; 'busy-too-long': see busyLimitMs. */
export type StreamVerdict = 'moving' | 'stalled' | 'busy-too-long';

/**
 * A NAS that says it is busy without taking data (reading back the kept part of an
 * upload, flushing a finished one to disk) is stuck once that lasts longer than its
 * disk would need at this rate for the whole layer: such a phase is kept alive by the
 * NAS's word, and a disk that hangs must not keep it alive forever.
 */
export const SLOWEST_BUSY_BYTES_PER_SEC = 8 * 2 ** 20;

/** How long bytes may stand still while the NAS says it is busy with a layer of `size` bytes. */
export function busyLimitMs(stallMs: number, size: number): number {
  return stallMs + Math.ceil((size / SLOWEST_BUSY_BYTES_PER_SEC) * 1000);
}

/** Whether a stream goes on, from when its bytes last moved and when the NAS last said it was busy (0: never). */
export function streamVerdict(nowMs: number, times: { movedAt: number; aliveAt: number }, limits: { stallMs: number; busyMaxMs: number }): StreamVerdict {
  if (nowMs - Math.max(times.movedAt, times.aliveAt) >= limits.stallMs) return 'stalled';
  if (nowMs - times.movedAt >= limits.busyMaxMs) return 'busy-too-long';
  return 'moving';
}

export interface StallReport {
  /** The transport's `where`. */
  where: string;
  direction: 'push' | 'pull';
  hash: string;
  verdict: Exclude<StreamVerdict, 'moving'>;
  stallMs: number;
  busyMaxMs?: number;
  /** Bytes of the layer done when it was stopped, if known. */
  done?: number;
  size?: number;
}

/** The failure of a stopped stream: the NAS, what was moving, the deadline, and what to do. */
export function stallError(report: StallReport): NasUnreachableError {
  const { where, direction, hash } = report;
  const doing = direction === 'push' ? `pushing layer ${hash}` : `pulling layer ${hash}`;
  const howFar =
    report.done === undefined || report.size === undefined ? '' : ` (${report.done} of ${report.size} bytes ${direction === 'push' ? 'sent' : 'received'})`;
  const what =
    report.verdict === 'stalled'
      ? `${direction === 'push' ? 'took' : 'sent'} nothing for ${report.stallMs / 1000} s (stallSeconds)`
      : `said it was busy but took no data for ${Math.round((report.busyMaxMs ?? report.stallMs) / 1000)} s, longer than a working disk needs for this layer`;
  return new NasUnreachableError(`the NAS (${where}) ${what} while ${doing}${howFar}: the transfer was stopped`, {
    remedy:
      'check that the NAS is up and not overloaded (kss doctor); the next try resumes where this one stopped. ' +
      'A NAS that is only slow needs a larger "stallSeconds" in the configuration',
  });
}
