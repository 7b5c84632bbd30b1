// Two simulated hosts sharing a directory NAS, with a two-disk domain enabled on the
// desktop and pushed by one session; the hook is the built executable, called as
// libvirt calls it.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import type { Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, guestDigest, qemuIo } from './disks.js';
import { TestHost, managedDomainXml } from './hosts.js';
import { requireTools } from './tools.js';

/** A two-disk domain on two hosts, enabled on the desktop and pushed by one session; `hostConfig` is added to both hosts' configuration. */
export async function twoHosts(t: TestContext, root: string, domain: string, hostConfig: Record<string, unknown> = {}) {
  if (!requireTools(t, 'qemu-img', 'qemu-io')) return undefined;
  const nas = join(root, `${domain}-nas`);
  mkdirSync(nas);
  const desk = new TestHost('desk', join(root, `${domain}-desk`), nas, hostConfig);
  const laptop = new TestHost('laptop', join(root, `${domain}-laptop`), nas, hostConfig);
  const deskDisks = { vda: desk.disk(`${domain}.qcow2`), vdb: desk.disk(`${domain}-home.qcow2`) };
  const laptopDisks = { vda: laptop.disk(`${domain}.qcow2`), vdb: laptop.disk(`${domain}-home.qcow2`) };
  createImage(deskDisks.vda, 16 * MiB);
  createImage(deskDisks.vdb, 16 * MiB);
  qemuIo(deskDisks.vda, 'write -P 0x11 0 2M');
  qemuIo(deskDisks.vdb, 'write -P 0x12 4M 1M');
  await enableDisks(domain, deskDisks, { config: await desk.config(), log: desk.quietLog() });
  const xmlOf = (host: TestHost) => managedDomainXml(domain, host === desk ? deskDisks : laptopDisks);
  const call = (host: TestHost, op: string, subop = op === 'release' ? 'end' : 'begin') => host.call(domain, op, subop, xmlOf(host));
  const ok = (host: TestHost, op: string) => {
    const run = call(host, op);
    assert.equal(run.status, 0, `${host.name} ${op}: ${run.stderr}`);
    assert.equal(run.stdout, '', `${host.name} ${op} wrote to stdout`);
  };
  /** One session on a host: start, `writes`, stop, and the stop's work finished. */
  const session = async (host: TestHost, writes: (disks: { vda: string; vdb: string }) => void = () => undefined) => {
    ok(host, 'prepare');
    writes(host === desk ? deskDisks : laptopDisks);
    ok(host, 'release');
    await host.waitForStop(domain);
  };
  const manifest = async () =>
    (await new NasRepository(new DirTransport({ root: nas, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host: 'test' }).readManifest(domain)) as Manifest;
  const digests = (disks: Record<string, string>) => Object.fromEntries(Object.entries(disks).map(([target, path]) => [target, guestDigest(path)]));
  /** The desktop stops (its work finished) and the laptop starts: it must read exactly `expected`. */
  const handOver = async (expected: Record<string, string>) => {
    ok(desk, 'release');
    await desk.waitForStop(domain);
    ok(laptop, 'prepare');
    assert.deepEqual(digests(laptopDisks), expected, 'every byte reached the other host');
  };
  await session(desk);
  return { domain, nas, desk, laptop, deskDisks, laptopDisks, call, ok, session, manifest, digests, handOver };
}

