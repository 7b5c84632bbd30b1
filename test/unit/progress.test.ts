import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createProgressMeter, formatBytes, formatDuration, formatProgress, type ProgressReport } from '../../lib/progress.js';

describe('progress meter', () => {
  it('reports rate and time left at most every interval, and once at the end', () => {
    let t = 0;
    const reports: ProgressReport[] = [];
    const meter = createProgressMeter(1000e6, (p) => reports.push(p), { now: () => t, intervalMs: 1000 });
    for (t = 0; t <= 4000; t += 250) meter.update(t * 100_000); // 100 MB/s
    meter.finish();
    assert.equal(reports.length, 6);
    const last = reports[4] as ProgressReport;
    assert.equal(last.done, 400e6);
    assert.ok(Math.abs(last.bytesPerSecond - 100e6) < 1);
    assert.ok(Math.abs((last.etaSeconds ?? 0) - 6) < 0.01);
    assert.equal(reports[5]?.finished, true);
  });
});

describe('progress text', () => {
  const bytes: Array<[number, string]> = [[512, '512 B'], [1536, '1.5 KiB'], [12 * 2 ** 30, '12.0 GiB']];
  for (const [n, text] of bytes) it(`${n} -> ${text}`, () => assert.equal(formatBytes(n), text));
  const durations: Array<[number, string]> = [[45, '45s'], [185, '3m05s'], [3720, '1h02m']];
  for (const [s, text] of durations) it(`${s}s -> ${text}`, () => assert.equal(formatDuration(s), text));
  it('puts it together', () => {
    assert.equal(
      formatProgress({ done: 2 ** 30, total: 10 * 2 ** 30, bytesPerSecond: 112.4e6, etaSeconds: 96, finished: false }),
      '1.0 GiB of 10.0 GiB (10%), 112.4 MB/s, 1m36s left',
    );
  });
});
