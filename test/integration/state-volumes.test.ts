// UEFI variables and TPM state as state volumes (lib/sync/state-volumes.ts), hook call by
// hook call on two simulated hosts (no libvirtd: the hook's own part) sharing one NAS:
// what a host had before it synced is kept, what no VM ran on is never taken for the
// machine's state, and a state volume from the NAS that kvm-snapshot-sync did not write
// is refused before any file is written.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import type { Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';
import { TestHost, managedDomainXml } from '../helpers/hosts.js';
import { requireTools } from '../helpers/tools.js';

const UUID = '3f1e2d3c-4b5a-4697-8877-665544332211';
let root: string;
let nas: string;
let count = 0;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-volumes-'));
  nas = join(root, 'nas');
  mkdirSync(nas);
});
after(() => rmSync(root, { recursive: true, force: true }));

/** One host's view of the domain: its disk, its NVRAM file, its TPM state file. */
function hostOf(name: string, domain: string) {
  const dir = join(root, `${domain}-${name}`);
  const host = new TestHost(name, dir, nas, { swtpmDir: join(dir, 'swtpm') });
  const disks = { vda: host.disk(`${domain}.qcow2`) };
  const nvram = join(dir, 'nvram', `${domain}_VARS.fd`);
  const tpm = join(dir, 'swtpm', UUID, 'tpm2', 'tpm2-00.permall');
  const xml = managedDomainXml(domain, disks, { uuid: UUID, nvram });
  const call = (op: string, subop: string) => host.call(domain, op, subop, xml);
  const must = (op: string, subop: string) => {
    const result = call(op, subop);
    assert.equal(result.status, 0, `${name} ${op}: ${result.stderr}`);
  };
  const writeState = (fill: number) => {
    mkdirSync(dirname(nvram), { recursive: true });
    mkdirSync(dirname(tpm), { recursive: true });
    writeFileSync(nvram, Buffer.alloc(540_672, fill));
    writeFileSync(tpm, Buffer.alloc(6095, fill + 1));
  };
  const state = () => [readFileSync(nvram), readFileSync(tpm)];
  return { host, disks, nvram, tpm, call, must, writeState, state };
}

/** The domain enabled on the desktop with its firmware's state, its first session pushed, and the laptop beside it. */
async function twoHosts(t: TestContext) {
  if (!requireTools(t, 'qemu-img', 'qemu-io')) return undefined;
  const domain = `vm${(count += 1)}`;
  const desk = hostOf('desk', domain);
  const laptop = hostOf('laptop', domain);
  createImage(desk.disks.vda, 16 * MiB);
  desk.writeState(0x10);
  const sources = [
    { kind: 'nvram' as const, path: desk.nvram },
    { kind: 'tpm' as const, path: join(dirname(dirname(desk.tpm))) },
  ];
  await enableDisks(domain, desk.disks, { config: await desk.host.config(), log: desk.host.quietLog() }, undefined, sources);
  desk.must('prepare', 'begin');
  desk.must('release', 'end');
  await desk.host.waitForStop(domain);
  return { domain, desk, laptop };
}

async function manifestOf(domain: string): Promise<Manifest> {
  return (await new NasRepository(new DirTransport({ root: nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'test' }).readManifest(domain)) as Manifest;
}

describe('state volumes, hook call by hook call', () => {
  it('keeps aside the NVRAM and TPM state a host had before it synced, byte for byte', async (t) => {
    const hosts = await twoHosts(t);
    if (!hosts) return;
    const { desk, laptop } = hosts;
    laptop.writeState(0x70); // a VM of that name ran here before: its own variables and TPM
    const own = laptop.state();
    laptop.must('prepare', 'begin');
    assert.deepEqual(laptop.state(), desk.state(), "the laptop runs on the desktop's state");
    const nvramAside = readdirSync(dirname(laptop.nvram)).filter((name) => name.includes('.kss-before-'));
    const tpmAside = readdirSync(join(dirname(laptop.tpm), '..', '..')).filter((name) => name.startsWith(`${UUID}.kss-before-`));
    assert.equal(nvramAside.length, 1, readdirSync(dirname(laptop.nvram)).join(' '));
    assert.equal(tpmAside.length, 1, readdirSync(join(dirname(laptop.tpm), '..', '..')).join(' '));
    assert.deepEqual(readFileSync(join(dirname(laptop.nvram), nvramAside[0] as string)), own[0], 'its own NVRAM, kept');
    assert.deepEqual(readFileSync(join(dirname(laptop.tpm), '..', '..', tpmAside[0] as string, 'tpm2', 'tpm2-00.permall')), own[1], 'its own TPM state, kept');
    assert.match(laptop.host.log(hosts.domain), /kept files this host had never synced aside/u);
  });

  it('takes nothing for the machine\'s state from a stop after a refused start', async (t) => {
    const hosts = await twoHosts(t);
    if (!hosts) return;
    const { domain, desk, laptop } = hosts;
    desk.must('prepare', 'begin'); // the desktop runs the VM: the lease is its
    laptop.writeState(0x70);
    const refused = laptop.call('prepare', 'begin');
    assert.notEqual(refused.status, 0, 'the laptop may not start it meanwhile');
    assert.match(refused.stderr, /in use on host desk/u);
    laptop.must('release', 'end'); // libvirt runs the release hook after a refused start
    await laptop.host.waitForStop(domain);
    const before = await manifestOf(domain);
    assert.deepEqual((await laptop.host.state(domain)).pending, [], "the laptop's own files were not sealed");

    desk.writeState(0x20); // what the VM changed on the desktop
    desk.must('release', 'end');
    await desk.host.waitForStop(domain);
    const after = await manifestOf(domain);
    assert.equal(Object.keys(after.generations).length, Object.keys(before.generations).length + 1);
    assert.equal(after.generations[after.head as string]?.host, 'desk');
    laptop.must('prepare', 'begin');
    assert.deepEqual(laptop.state(), desk.state(), "the laptop gets the desktop's state, not its own old files");
  });

  it('refuses a state volume kvm-snapshot-sync did not write, before writing any file', async (t) => {
    const hosts = await twoHosts(t);
    if (!hosts) return;
    const { domain, desk, laptop } = hosts;
    // The desktop's volume gets a bundle that names a file outside the TPM directory, as
    // anything that can write to the NAS could make it; a seal and a push carry it there.
    const index = Buffer.from(JSON.stringify([{ path: '../../escaped', mode: 0o600, size: 4 }]));
    const header = Buffer.alloc(20);
    header.write('KSSVOL1\n', 'latin1');
    header.writeBigUInt64BE(4n, 8);
    header.writeUInt32BE(index.length, 16);
    const forged = join(root, `${domain}-forged`);
    writeFileSync(forged, Buffer.concat([header, index, Buffer.from('evil'), Buffer.alloc(65536)]).subarray(0, 65536));
    const config = await desk.host.config();
    desk.must('prepare', 'begin');
    qemuIo(join(config.stateDir, 'domains', domain, 'volumes', 'tpm.qcow2'), `write -s ${forged} 0 64k`);
    desk.must('release', 'end');
    await desk.host.waitForStop(domain);

    const refused = laptop.call('prepare', 'begin');
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /a state volume does not hold a valid state bundle: "\.\.\/\.\.\/escaped" is not a plain file name/u);
    assert.match(refused.stderr, /roll back to an earlier generation/u);
    const everything = readdirSync(laptop.host.dir, { recursive: true }).map(String);
    assert.deepEqual(everything.filter((name) => name.includes('escaped') || name.startsWith('swtpm')), [], 'no file was written, inside the TPM directory or out');
  });
});
