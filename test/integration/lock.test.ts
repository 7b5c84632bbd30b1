// The per-domain lock, with real processes: one holder at a time, and a holder killed
// with SIGKILL does not block the next one forever.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { LockedError } from '../../lib/errors.js';
import { acquireLock, withLock } from '../../lib/lock.js';

const holder = `
  import { acquireLock } from './lib/lock.ts';
  await acquireLock(process.argv[1], { waitMs: 0, staleMs: 2000 });
  process.stdout.write('held\\n');
  setInterval(() => {}, 1000);
`;

/** Holds the lock, then stalls (as a suspended laptop does) past its staleness, then looks whether it still holds it. */
const staller = `
  import { acquireLock } from './lib/lock.ts';
  const release = await acquireLock(process.argv[1], { waitMs: 0, staleMs: 2000 });
  process.stdout.write('held\\n');
  await new Promise((resolve) => setTimeout(resolve, 300));
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 4000); // no timer runs meanwhile
  try {
    release.assertHeld();
    process.stdout.write('still held\\n');
  } catch (error) {
    process.stdout.write(\`lost: \${error.message}\\n\`);
  }
  process.exit(0);
`;

describe('domain lock', () => {
  it('tells a holder that stalled past the stale limit it lost the lock, and its exit leaves the new holder\'s lock alone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-lock-'));
    const path = join(dir, 'lock');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', staller, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    let said = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (said += text));
    while (!said.includes('held')) await new Promise((resolve) => setTimeout(resolve, 50));
    const taken = await acquireLock(path, { waitMs: 10_000, staleMs: 2000 }); // taken over while the holder stalls
    await once(child, 'exit');
    assert.match(said, /lost: lost the lock .* \(not refreshed for \d+ s, and taken over\); stopped before the next step/u);
    assert.ok(existsSync(`${path}.lock`), "the stalled holder's exit did not remove the new holder's lock");
    taken.assertHeld();
    await taken();
    rmSync(dir, { recursive: true, force: true });
  });

  it('tells a holder that stalled, when nobody took the lock over, that it still holds it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-lock-'));
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', staller, join(dir, 'lock')], { stdio: ['ignore', 'pipe', 'inherit'] });
    let said = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (said += text));
    await once(child, 'exit');
    assert.match(said, /still held/u);
    rmSync(dir, { recursive: true, force: true });
  });

  it('lets one holder in at a time, and frees on release', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-lock-'));
    const path = join(dir, 'vm', 'lock');
    const release = await acquireLock(path, { waitMs: 0 });
    await assert.rejects(acquireLock(path, { waitMs: 300 }), LockedError);
    await release();
    await release();
    assert.equal(await withLock(path, { waitMs: 0 }, async () => 'ran'), 'ran');
    await assert.rejects(withLock(path, { waitMs: 0 }, async () => { throw new Error('boom'); }), /boom/);
    (await acquireLock(path, { waitMs: 0 }))();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes over a lock whose holder was killed with SIGKILL', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-lock-'));
    const path = join(dir, 'lock');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', holder, path], { stdio: ['ignore', 'pipe', 'inherit'] });
    await once(child.stdout, 'data');
    await assert.rejects(acquireLock(path, { waitMs: 200, staleMs: 2000 }), LockedError, 'held while the holder lives');
    child.kill('SIGKILL');
    await once(child, 'exit');
    const release = await acquireLock(path, { waitMs: 10_000, staleMs: 2000 });
    await release();
    rmSync(dir, { recursive: true, force: true });
  });
});
