import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createProgressMeter, formatBytes, formatDuration, formatProgress, progressBarReporter, progressLogReporter, renderProgressBar, type ProgressReport } from '../../lib/progress.js';

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

describe('progress reporters', () => {
  const half: ProgressReport = { done: 2 ** 30, total: 2 * 2 ** 30, bytesPerSecond: 100e6, etaSeconds: 11, finished: false };
  it('draw a bar that fits the terminal', () => {
    const line = renderProgressBar('push vda', half, 100);
    assert.equal(line.length, 100);
    assert.match(line, /^push vda \[#+-+\] 1\.0 GiB of 2\.0 GiB \(50%\), 100\.0 MB\/s, 11s left$/);
    const hashes = (/#+/u.exec(line) as RegExpExecArray)[0].length;
    const dashes = (/-+\]/u.exec(line) as RegExpExecArray)[0].length - 1;
    assert.ok(Math.abs(hashes - dashes) <= 1, 'half full');
  });
  it('redraw in place on a TTY, and write one line elsewhere', () => {
    const tty: string[] = [];
    const pipe: string[] = [];
    const toTty = progressBarReporter('pull', { isTTY: true, columns: 60, write: (t: string) => tty.push(t) });
    const toPipe = progressBarReporter('pull', { write: (t: string) => pipe.push(t) });
    for (const report of [half, { ...half, done: half.total, etaSeconds: 0, finished: true }]) {
      toTty(report);
      toPipe(report);
    }
    assert.equal(tty.length, 2);
    assert.ok(tty.every((t) => t.startsWith('\r')) && tty[1]?.endsWith('\n'));
    assert.deepEqual(pipe, ['pull: 2.0 GiB of 2.0 GiB (100%), 100.0 MB/s, 0s left\n']);
  });
  it('log at most every interval, and always the end', () => {
    let t = 0;
    const lines: string[] = [];
    const report = progressLogReporter((m) => lines.push(m), 'push', { everyMs: 10_000, now: () => t });
    for (t = 0; t < 25_000; t += 1000) report(half);
    report({ ...half, finished: true });
    assert.equal(lines.length, 4);
  });
});
