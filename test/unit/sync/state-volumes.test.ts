import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseDomainXml } from '../../../lib/domain-xml.js';
import { CLUSTER, VOLUME_SIZE, attachStateVolumes, stateSourcesOf, volumeWrites } from '../../../lib/sync/state-volumes.js';
import type { LocalState } from '../../../lib/sync/local-state.js';

const UUID = '0F5D3C2A-9B1E-4C77-8E21-3A4B5C6D7E8F';
const domain = (os: string, devices: string) =>
  parseDomainXml(`<domain type='kvm'><name>win</name><uuid>${UUID}</uuid><os><type>hvm</type>${os}</os><devices>${devices}</devices></domain>`);

describe('where a domain keeps its state beside its disks', () => {
  it('finds the NVRAM file as libvirt writes it, and the TPM directory by UUID', async () => {
    const win = await domain("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/var/lib/libvirt/qemu/nvram/win_VARS.fd</nvram>", "<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>");
    assert.deepEqual(stateSourcesOf(win, '/var/lib/libvirt/swtpm'), [
      { kind: 'nvram', path: '/var/lib/libvirt/qemu/nvram/win_VARS.fd' },
      { kind: 'tpm', path: `/var/lib/libvirt/swtpm/${UUID.toLowerCase()}` },
    ]);
  });

  it('reads a <source file> NVRAM; leaves out a TPM of the host or one with a state source of its own', async () => {
    const passthrough = await domain("<nvram type='file'><source file='/srv/vars.fd'/></nvram>", "<tpm model='tpm-tis'><backend type='passthrough'><device path='/dev/tpm0'/></backend></tpm>");
    assert.deepEqual(stateSourcesOf(passthrough, '/s'), [{ kind: 'nvram', path: '/srv/vars.fd' }]);
    const ownDir = await domain('', "<tpm model='tpm-crb'><backend type='emulator' version='2.0'><source type='dir' path='/srv/tpm'/></backend></tpm>");
    assert.deepEqual(stateSourcesOf(ownDir, '/s'), []);
    assert.deepEqual(stateSourcesOf(await domain('', ''), '/s'), [], 'a BIOS domain without a TPM has no state beside its disks');
  });

  it('attaches volumes under the state directory, keeping what it knows only while the source stays', () => {
    const state = { domain: 'win', disks: { vda: '/img/win.qcow2', '@tpm': '/old' }, volumes: { '@nvram': { source: '/a', seen: 'x' }, '@tpm': { source: '/t', seen: 'y' } } } as unknown as LocalState;
    attachStateVolumes(state, [{ kind: 'nvram', path: '/a' }, { kind: 'tpm', path: '/moved' }], '/state');
    assert.deepEqual(state.disks, { vda: '/img/win.qcow2', '@nvram': '/state/domains/win/volumes/nvram.qcow2', '@tpm': '/state/domains/win/volumes/tpm.qcow2' });
    assert.deepEqual(state.volumes, { '@nvram': { source: '/a', seen: 'x' }, '@tpm': { source: '/moved' } });
    attachStateVolumes(state, [], '/state');
    assert.deepEqual([state.disks, state.volumes], [{ vda: '/img/win.qcow2' }, undefined], 'a TPM removed from the definition leaves the generation');
  });
});

describe('what a capture writes into a state volume', () => {
  const bytes = (length: number, fill: number) => Buffer.alloc(length, fill);
  it('writes only the clusters that differ', () => {
    const old = Buffer.concat([bytes(CLUSTER, 1), bytes(CLUSTER, 2), bytes(100, 3)]);
    const next = Buffer.concat([bytes(CLUSTER, 1), bytes(CLUSTER, 9), bytes(100, 3)]);
    assert.deepEqual(volumeWrites(old, next).map((w) => [w.offset, w.length, w.data?.[0]]), [[CLUSTER, CLUSTER, 9]]);
    assert.deepEqual(volumeWrites(next, next), [], 'nothing changed: nothing written');
  });

  it('zeroes what the old bundle held beyond the new one', () => {
    const old = bytes(3 * CLUSTER, 7);
    const next = bytes(10, 7);
    assert.deepEqual(volumeWrites(old, next).map((w) => [w.offset, w.data === undefined]), [[0, false], [CLUSTER, true], [2 * CLUSTER, true]]);
  });

  it('writes everything, and zeroes the rest of the volume, over content it cannot read', () => {
    const writes = volumeWrites(undefined, bytes(CLUSTER + 1, 5));
    assert.deepEqual(writes.map((w) => [w.offset, w.length, w.data === undefined]), [[0, CLUSTER, false], [CLUSTER, CLUSTER, false], [2 * CLUSTER, VOLUME_SIZE - 2 * CLUSTER, true]]);
    assert.deepEqual(writes[1]?.data?.subarray(0, 2), Buffer.from([5, 0]), 'a last cluster is padded with zeros');
  });
});
