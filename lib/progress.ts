// Progress of long transfers: bytes, rate, time left. The meter is pure over an
// injected clock; the CLI draws it as a bar, the hook writes it as log lines.

export interface ProgressReport {
  done: number;
  total: number;
  /** Recent rate, over the last few seconds. */
  bytesPerSecond: number;
  /** Seconds left at the recent rate; undefined before a rate is known. */
  etaSeconds: number | undefined;
  finished: boolean;
}

export interface ProgressMeter {
  /** Records the bytes done so far (a running total). */
  update(done: number): void;
  /** Reports the final state once. */
  finish(): void;
}

const WINDOW_MS = 5000;

/** A meter that reports at most every `intervalMs`, and always once at the end. */
export function createProgressMeter(
  total: number,
  report: (progress: ProgressReport) => void,
  { now = Date.now, intervalMs = 500 }: { now?: () => number; intervalMs?: number } = {},
): ProgressMeter {
  const samples: Array<[number, number]> = [];
  let lastReport = -Infinity;
  let done = 0;
  const build = (finished: boolean): ProgressReport => {
    const [t0, d0] = samples[0] ?? [now(), done];
    const [t1, d1] = samples[samples.length - 1] ?? [t0, d0];
    const bytesPerSecond = t1 > t0 ? ((d1 - d0) * 1000) / (t1 - t0) : 0;
    const etaSeconds = bytesPerSecond > 0 ? Math.max(0, (total - done) / bytesPerSecond) : undefined;
    return { done, total, bytesPerSecond, etaSeconds: finished ? 0 : etaSeconds, finished };
  };
  return {
    update(value) {
      done = value;
      const t = now();
      samples.push([t, value]);
      while (samples.length > 2 && (samples[0] as [number, number])[0] < t - WINDOW_MS) samples.shift();
      if (t - lastReport >= intervalMs) {
        lastReport = t;
        report(build(false));
      }
    },
    finish() {
      report(build(true));
    },
  };
}

/** "1.2 GiB of 12.0 GiB (10%), 112.4 MB/s, 1m36s left" */
export function formatProgress(progress: ProgressReport): string {
  const percent = progress.total > 0 ? Math.floor((progress.done * 100) / progress.total) : 100;
  const rate = `${(progress.bytesPerSecond / 1e6).toFixed(1)} MB/s`;
  const eta = progress.etaSeconds === undefined ? '' : `, ${formatDuration(progress.etaSeconds)} left`;
  return `${formatBytes(progress.done)} of ${formatBytes(progress.total)} (${percent}%), ${rate}${eta}`;
}

/** Bytes in binary units, one decimal: "512 B", "1.5 KiB", "12.0 GiB". */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** "45s", "3m05s", "1h02m". */
export function formatDuration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
