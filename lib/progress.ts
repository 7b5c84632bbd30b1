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

/** "[#########-----------] 45%  1.2 GiB of 2.7 GiB, 112.4 MB/s, 13s left" in `width` columns. */
export function renderProgressBar(label: string, progress: ProgressReport, width = 80): string {
  const text = ` ${formatProgress(progress)}`;
  const room = Math.max(10, width - label.length - text.length - 3);
  const filled = progress.total > 0 ? Math.min(room, Math.floor((progress.done / progress.total) * room)) : room;
  return `${label} [${'#'.repeat(filled)}${'-'.repeat(room - filled)}]${text}`;
}

/**
 * For people at a terminal: redraws one line in place on a TTY; elsewhere (a pipe, a
 * log) writes a line only at the end, so that no output is flooded with redraws.
 */
export function progressBarReporter(label: string, stream: { write(text: string): unknown; isTTY?: boolean; columns?: number }) {
  return (progress: ProgressReport): void => {
    if (stream.isTTY) {
      stream.write(`\r${renderProgressBar(label, progress, stream.columns ?? 80)}${progress.finished ? '\n' : ''}`);
    } else if (progress.finished) {
      stream.write(`${label}: ${formatProgress(progress)}\n`);
    }
  };
}

/** For logs (the hook, background pushes): one line every `everyMs`, and one at the end. */
export function progressLogReporter(
  write: (message: string) => void,
  label: string,
  { everyMs = 10_000, now = Date.now }: { everyMs?: number; now?: () => number } = {},
) {
  let last = -Infinity;
  return (progress: ProgressReport): void => {
    if (!progress.finished && now() - last < everyMs) return;
    last = now();
    write(`${label}: ${formatProgress(progress)}`);
  };
}
