// The per-domain lock, with real processes: one holder at a time, and a holder killed
// with SIGKILL does not block the next one forever.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
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

describe('domain lock', () => {
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
