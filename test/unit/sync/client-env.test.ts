import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { describe, it } from 'node:test';
import { flagsFromEnvironment, isVirshStart, readClientEnvironment } from '../../../lib/sync/client-env.js';

describe('isVirshStart', () => {
  const rows: Array<[string[], boolean]> = [
    [['virsh', 'start', 'work'], true],
    [['/usr/bin/virsh', '-c', 'qemu:///system', 'start', 'work'], true],
    [['virsh', 'start', '--domain', 'work'], true],
    [['virsh', 'start', 'work2'], false],
    [['virsh', 'destroy', 'work'], false],
    [['virsh'], false],
    [['bash', '-c', 'virsh start work'], false],
    [['myvirsh', 'start', 'work'], false],
  ];
  for (const [argv, expected] of rows) it(`${argv.join(' ')} -> ${expected}`, () => assert.equal(isVirshStart(argv, 'work'), expected));
});

describe('flagsFromEnvironment', () => {
  it('reads the KSS_ variables', () => {
    assert.deepEqual(flagsFromEnvironment('PATH=/bin\0KSS_NO_SYNC=1\0'), { skipSync: true, stealLease: false });
    assert.deepEqual(flagsFromEnvironment('KSS_STEAL_LEASE=yes\0KSS_NO_SYNC=0\0'), { skipSync: false, stealLease: true });
    assert.deepEqual(flagsFromEnvironment(''), { skipSync: false, stealLease: false });
  });
});

describe('readClientEnvironment', () => {
  it('finds one local `virsh start DOMAIN` and reads its environment', async () => {
    // A process whose argv is `virsh -f /dev/null start DOMAIN` (tail, renamed).
    const fake = (env: NodeJS.ProcessEnv) => spawn('bash', ['-c', 'exec -a virsh tail -f /dev/null start "$0"', domain], { env, stdio: 'ignore' });
    const domain = `client-test-${process.pid}`;
    const none = await readClientEnvironment(domain);
    assert.deepEqual(none, { skipSync: false, stealLease: false, note: 'no local virsh start client' });
    const one = fake({ KSS_NO_SYNC: '1' });
    try {
      await new Promise((resolve) => setTimeout(resolve, 200));
      const found = await readClientEnvironment(domain);
      assert.equal(found.skipSync, true);
      assert.match(found.note, new RegExp(`pid ${one.pid}`));
      const two = fake({});
      await new Promise((resolve) => setTimeout(resolve, 200));
      assert.deepEqual(await readClientEnvironment(domain), { skipSync: false, stealLease: false, note: '2 virsh start clients: ignored' });
      two.kill();
    } finally {
      one.kill();
    }
  });
});
