// Where a VM runs and how kss view reaches its screen: the pure parts of
// lib/commands/view.ts and lib/commands/status.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runsLine, runsOn } from '../../lib/commands/status.js';
import { viewTarget, viewerCommand } from '../../lib/commands/view.js';
import { ToolError, UsageError } from '../../lib/errors.js';

const config = { host: 'desk', peers: { laptop: 'qemu+ssh://root@laptop.lan/system' } };
const lease = (host: string) => ({ host, since: '2026-12-04T10:00:00.000Z' });

describe('viewTarget', () => {
  it('looks here when the VM runs here, whatever the lease says', () => {
    assert.deepEqual(viewTarget('work', { config, localUri: 'qemu:///system', runsHere: true, lease: lease('laptop') }), { host: 'desk', uri: 'qemu:///system', here: true });
  });

  it("looks on the lease's host, through its peers URI or one made of its name", () => {
    assert.deepEqual(viewTarget('work', { config, localUri: 'qemu:///system', runsHere: false, lease: lease('laptop') }), { host: 'laptop', uri: 'qemu+ssh://root@laptop.lan/system', here: false });
    assert.deepEqual(viewTarget('work', { config, localUri: 'qemu:///system', runsHere: false, lease: lease('office') }), { host: 'office', uri: 'qemu+ssh://office/system', here: false });
  });

  it('refuses when it runs nowhere, or is checked out here and shut off, saying how to start it', () => {
    assert.throws(() => viewTarget('work', { config, localUri: 'qemu:///system', runsHere: false, lease: null }), (e: unknown) => e instanceof UsageError && /runs nowhere/u.test(e.message) && e.remedy === 'kss start work starts it here');
    assert.throws(() => viewTarget('work', { config, localUri: 'qemu:///system', runsHere: false, lease: lease('desk') }), (e: unknown) => e instanceof UsageError && /shut off here, and still checked out here .*--no-push/u.test(e.message));
  });
});

describe('viewerCommand', () => {
  const here = { host: 'desk', uri: 'qemu:///system', here: true };
  const there = { host: 'laptop', uri: 'qemu+ssh://laptop/system', here: false };
  it('runs virt-viewer on the libvirt URI, reconnecting across a restart or a move', () => {
    assert.deepEqual(viewerCommand('work', there, { virtViewer: true, remoteViewer: true }, 'spice://127.0.0.1:5900'), { file: 'virt-viewer', args: ['--connect', 'qemu+ssh://laptop/system', '--reconnect', 'work'] });
  });
  it('runs remote-viewer on the display when only it is installed and the VM runs here', () => {
    assert.deepEqual(viewerCommand('work', here, { virtViewer: false, remoteViewer: true }, 'spice://127.0.0.1:5900'), { file: 'remote-viewer', args: ['spice://127.0.0.1:5900'] });
  });
  it('names the package to install when no viewer can reach the screen', () => {
    for (const installed of [{ virtViewer: false, remoteViewer: false }, { virtViewer: false, remoteViewer: true }]) {
      assert.throws(() => viewerCommand('work', there, installed, ''), (e: unknown) => e instanceof ToolError && /apt-get install virt-viewer/u.test(e.remedy ?? ''));
    }
  });
});

describe('runsOn and runsLine (kss status)', () => {
  it('is here when libvirt here says it runs, else the lease host, else nowhere', () => {
    assert.equal(runsOn(null, 'desk', true), 'desk');
    assert.equal(runsOn(lease('laptop'), 'desk', false), 'laptop');
    assert.equal(runsOn(lease('desk'), 'desk', false), null, 'checked out here but shut off: stopped with --no-push');
    assert.equal(runsOn(lease('desk'), 'desk', undefined), 'desk', 'libvirt could not say: the lease does');
    assert.equal(runsOn(null, 'desk', undefined), null);
  });
  it('says it in a phrase', () => {
    assert.equal(runsLine('work', 'desk', lease('desk'), 'desk'), 'runs here (kss view work shows its screen)');
    assert.equal(runsLine('work', 'laptop', lease('laptop'), 'desk'), 'runs on laptop, which has it checked out (kss view work shows its screen)');
    assert.match(runsLine('work', null, lease('desk'), 'desk'), /^runs nowhere: shut off here, still checked out here/u);
    assert.equal(runsLine('work', null, null, 'desk'), 'runs nowhere (no host has it checked out)');
  });
});
