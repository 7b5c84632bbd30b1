// The whole machine travels, end to end on real libvirtd: a UEFI domain with an emulated
// TPM 2.0 (OVMF and swtpm, under TCG here), whose variable store and TPM state must be
// on each host exactly as the last host left them, after kss clone, after each round
// trip, after a conflict's resolution and after a rollback.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, firmwareDomainXml } from '../helpers/libvirt-host.js';
import { startLibvirtPair, type LibvirtPair } from '../helpers/libvirt-pair.js';
import { SSH_NAS_TOOLS } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const TOOLS = [...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS, 'swtpm', 'swtpm_setup'];
const IMAGES = '/var/lib/libvirt/images';
const nvramOf = (domain: string) => `/var/lib/libvirt/qemu/nvram/${domain}_VARS.fd`;
const NVRAM = nvramOf('fw');
const TEMPLATE = '/usr/share/OVMF/OVMF_VARS_4M.fd';
let pair: LibvirtPair | undefined;
let desk: LibvirtHost | undefined;
let laptop: LibvirtHost | undefined;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...TOOLS) || !existsSync(TEMPLATE)) return;
  pair = await startLibvirtPair('kss-whole-', { pool: true });
  ({ desk, laptop } = pair);
});
after(() => pair?.stop());

/** The machine's state beside its disks on a host: the NVRAM file's digest, and each TPM state file's. */
function machineState(host: LibvirtHost, uuid: string, domain = 'fw'): { nvram: string; tpm: Record<string, string> } {
  const digest = (path: string) => createHash('sha256').update(readFileSync(path)).digest('hex');
  const tpm: Record<string, string> = {};
  const walk = (dir: string, prefix: string) => {
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      if (entry.name.startsWith('.')) continue;
      if (entry.isDirectory()) walk(join(dir, entry.name), `${prefix}${entry.name}/`);
      else tpm[`${prefix}${entry.name}`] = digest(join(dir, entry.name));
    }
  };
  walk(host.outside(`/var/lib/libvirt/swtpm/${uuid}`), '');
  return { nvram: digest(host.outside(nvramOf(domain))), tpm };
}

/** What the guest's firmware and TPM would change while it runs: bytes of the variable store, a file of the TPM's. */
function changeState(host: LibvirtHost, uuid: string, mark: string): void {
  const fd = openSync(host.outside(NVRAM), 'r+');
  writeSync(fd, Buffer.from(mark.padEnd(16, '.')), 0, 16, 0x80000);
  closeSync(fd);
  writeFileSync(host.outside(`/var/lib/libvirt/swtpm/${uuid}/tpm2/kss-test-${mark}`), mark);
}

/** A session that changes the state while the VM runs (paused: OVMF changes nothing itself), then its stop. */
async function session(host: LibvirtHost, uuid: string, mark: string, start: string[] = ['virsh', 'start', '--paused', 'fw']) {
  const started = start[0] === 'virsh' ? host.virsh(...start.slice(1)) : host.kss(start.slice(1));
  assert.equal(started.status, 0, `${host.name}: ${started.stderr}\n${host.hookLog('fw')}`);
  changeState(host, uuid, mark);
  host.mustVirsh('destroy', 'fw');
  await host.waitForStop('fw');
  return machineState(host, uuid);
}

/** Starts paused and reads the state the start put in place (nothing has run on it). */
async function placed(host: LibvirtHost, uuid: string) {
  const started = host.virsh('start', '--paused', 'fw');
  assert.equal(started.status, 0, `${host.name}: ${started.stderr}\n${host.hookLog('fw')}\n${execFileSync('ls', ['-laR', host.outside('/var/lib/libvirt/swtpm')], { encoding: 'utf8' })}`);
  const state = machineState(host, uuid);
  host.mustVirsh('destroy', 'fw');
  await host.waitForStop('fw');
  return state;
}

function keptAside(host: LibvirtHost, uuid: string): string[] {
  const nvramDir = readdirSync(host.outside('/var/lib/libvirt/qemu/nvram'));
  const swtpm = readdirSync(host.outside('/var/lib/libvirt/swtpm')).filter((name) => name.startsWith(uuid));
  return [...nvramDir, ...swtpm].filter((name) => name.includes('.kss-'));
}

describe('the whole VM on real libvirtd: UEFI variables and TPM state', () => {
  it('travel with every generation: clone, round trips, a conflict resolved, a rollback', async (t) => {
    if (!desk) return void t.skip('needs libvirt, sshd, OVMF and swtpm');
    const [d, l] = [desk, laptop as LibvirtHost];
    const disk = `${IMAGES}/fw.qcow2`;
    createImage(d.outside(disk), 32 * MiB);
    qemuIo(d.outside(disk), 'write -P 0x11 0 1M');
    d.define('fw', firmwareDomainXml('fw', { vda: disk }, false));
    const uuid = d.mustVirsh('domuuid', 'fw').trim();

    // A first boot, before it is managed: libvirt copies the template, swtpm_setup makes the TPM, OVMF writes its variables.
    d.mustVirsh('start', 'fw');
    const template = readFileSync(TEMPLATE);
    for (const deadline = Date.now() + 180_000; ; ) {
      if (existsSync(d.outside(NVRAM)) && !readFileSync(d.outside(NVRAM)).equals(template)) break;
      if (Date.now() > deadline) throw new Error('OVMF did not write its variable store');
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    d.mustVirsh('destroy', 'fw');
    const booted = machineState(d, uuid);
    assert.ok(booted.tpm['tpm2/tpm2-00.permall'], `swtpm made its state: ${JSON.stringify(booted.tpm)}`);

    const enabled = d.kss(['enable', 'fw']);
    assert.equal(enabled.status, 0, enabled.stderr);
    assert.match(enabled.stderr, /push @nvram [0-9a-f]{12}: .*\(100%\)/u, 'the variable store is pushed as a volume');
    assert.match(enabled.stderr, /push @tpm [0-9a-f]{12}: .*\(100%\)/u, 'the TPM state too');

    // The laptop starts on the desktop's variables and TPM, not on the template and a new TPM.
    const cloned = l.kss(['clone', 'fw']);
    assert.equal(cloned.status, 0, cloned.stderr);
    assert.deepEqual(await placed(l, uuid), booted, "after kss clone: the desktop's NVRAM and TPM state, byte for byte");
    const tss = Number(execFileSync('id', ['-u', 'tss'], { encoding: 'utf8' }).trim());
    for (const inside of ['tpm2', 'tpm2/tpm2-00.permall']) {
      assert.equal(statSync(l.outside(`/var/lib/libvirt/swtpm/${uuid}/${inside}`)).uid, tss, `${inside} is swtpm_user's, as libvirt makes it (swtpm must lock and write it)`);
    }
    assert.deepEqual(keptAside(l, uuid), [], 'nothing was there to keep aside');

    // Round trips: each host starts on what the other left.
    const onLaptop = await session(l, uuid, 'laptop-1');
    assert.notDeepEqual(onLaptop, booted);
    assert.deepEqual(await placed(d, uuid), onLaptop, "the desktop starts on the laptop's state");
    const onDesk = await session(d, uuid, 'desk-1');
    assert.deepEqual(await placed(l, uuid), onDesk, "the laptop starts on the desktop's state");
    assert.deepEqual([...keptAside(d, uuid), ...keptAside(l, uuid)], [], 'state that was synced is never kept aside');

    // A conflict: the laptop pushes, the desktop works on without syncing; keep the laptop's.
    const pushed = await session(l, uuid, 'laptop-2');
    const offline = await session(d, uuid, 'desk-offline', ['kss', 'start', 'fw', '--no-sync']);
    assert.match(d.hookLog('fw'), /kept here \(conflict: the NAS head moved/u, "the desktop's push was refused");
    const refused = d.virsh('start', 'fw');
    assert.notEqual(refused.status, 0);
    await d.waitForStop('fw');
    assert.match(refused.stderr, /fw changed both here and on the NAS/u);
    const remote = d.kss(['resolve', 'fw', '--keep', 'remote']);
    assert.equal(remote.status, 0, remote.stderr);
    const branch = /the other side is branch (\S+)/u.exec(remote.stdout)?.[1] as string;
    assert.deepEqual(await placed(d, uuid), pushed, "kept remote: the laptop's NVRAM and TPM with its disks");

    // The desktop's side is a branch, and a rollback to it brings its state back too.
    const back = d.kss(['rollback', 'fw', '--to', branch]);
    assert.equal(back.status, 0, back.stderr);
    assert.deepEqual(await placed(d, uuid), offline, "rolled back: the desktop's offline state");
    assert.deepEqual(await placed(l, uuid), offline, 'and the laptop follows');
  });

  it('carries an encrypted TPM state; kss doctor says when this host lacks its libvirt secret', async (t) => {
    if (!desk) return void t.skip('needs libvirt, sshd, OVMF and swtpm');
    const [d, l] = [desk, laptop as LibvirtHost];
    const secret = '8e0f0c1a-4b2d-4c3e-9f5a-6b7c8d9e0f1a';
    const defineSecret = (host: LibvirtHost) => {
      const file = '/var/lib/libvirt/vtpm-secret.xml';
      writeFileSync(host.outside(file), `<secret ephemeral='no' private='yes'><uuid>${secret}</uuid><usage type='vtpm'><name>VTPM_fwenc</name></usage></secret>`);
      host.mustVirsh('secret-define', file);
      host.mustVirsh('secret-set-value', secret, '--base64', Buffer.from('the same passphrase on both hosts').toString('base64'));
    };
    defineSecret(d);
    const disk = `${IMAGES}/fwenc.qcow2`;
    createImage(d.outside(disk), 16 * MiB);
    d.define('fwenc', firmwareDomainXml('fwenc', { vda: disk }, false, secret));
    const uuid = d.mustVirsh('domuuid', 'fwenc').trim();
    d.mustVirsh('start', '--paused', 'fwenc'); // swtpm_setup makes the encrypted state before QEMU runs
    d.mustVirsh('destroy', 'fwenc');
    const made = machineState(d, uuid, 'fwenc');
    assert.ok(made.tpm['tpm2/tpm2-00.permall'], JSON.stringify(made));
    assert.equal(d.kss(['enable', 'fwenc']).status, 0);

    const cloned = l.kss(['clone', 'fwenc']);
    assert.equal(cloned.status, 0, cloned.stderr);
    const lacking = l.kss(['doctor']);
    assert.match(lacking.stdout, new RegExp(`FAIL  secrets   fwenc: its TPM state is encrypted with libvirt secret ${secret}, which is not defined on this host: the VM cannot start here\n {6}fix: on the other host: virsh secret-dumpxml ${secret}`, 'u'));
    assert.notEqual(lacking.status, 0);
    defineSecret(l);
    assert.match(l.kss(['doctor']).stdout, new RegExp(`OK    secrets   fwenc: its TPM state's secret ${secret} is defined here`, 'u'));

    const started = l.virsh('start', '--paused', 'fwenc');
    assert.equal(started.status, 0, `swtpm opens the state with the secret: ${started.stderr}`);
    assert.deepEqual(machineState(l, uuid, 'fwenc'), made, "the laptop runs on the desktop's encrypted TPM state");
    l.mustVirsh('destroy', 'fwenc');
    await l.waitForStop('fwenc');
  });
});
