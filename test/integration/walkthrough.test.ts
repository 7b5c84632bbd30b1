// "A new person moves a VM between two machines using only the README": the README's
// walkthrough blocks, run line by line as root inside two bare simulated hosts (their
// own /usr, /var, the /etc directories of libvirt and ours, and a real libvirtd; nothing
// of ours installed, the package built from this clone at hand), with the
// simulated NAS (real sshd behind a 1 Gbit link) in place of `nas.lan`. The guest's
// work and its shutdown are the harness's part: writes through the running domain,
// then `virsh destroy`.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { qemuIoAs } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { SSH_NAS_TOOLS, startSshNas, type SshNas } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const REPO = resolve('.');
const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
let work: string;
let nas: SshNas | undefined;
let desktop: LibvirtHost | undefined;
let laptop: LibvirtHost | undefined;

/** The command lines of the README block after `<!-- walkthrough: NAME -->`, comments dropped. */
function block(name: string): string[] {
  const match = new RegExp(`<!-- walkthrough: ${name} -->\\n\`\`\`sh\\n([\\s\\S]*?)\`\`\``, 'u').exec(readme);
  assert.ok(match, `README.md has a <!-- walkthrough: ${name} --> block`);
  return (match[1] as string).split('\n').map((line) => line.replace(/\s+#.*$/u, '').trim()).filter(Boolean);
}

/** Runs a block on a host as root from the clone, the NAS's address swapped for the simulated one's. */
function run(host: LibvirtHost, name: string): string {
  const target = (nas as SshNas).target;
  let output = '';
  for (const line of block(name)) {
    const command = line
      .replace('ssh://kss@nas.lan/volume1/kss', `ssh://root@${target.host}:${target.port}${(nas as SshNas).root}`)
      .replace('ssh-keyscan nas.lan', `ssh-keyscan -p ${target.port} ${target.host}`);
    const result = host.inside(['sh', '-c', `cd '${REPO}' && ${command}`]);
    assert.equal(result.status, 0, `${host.name}: ${command}\n${result.stdout}${result.stderr}`);
    output += result.stdout;
  }
  return output;
}

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS, 'ssh-keyscan', 'dpkg-deb', 'apt-get', 'objdump')) return;
  work = mkdtempSync(join(tmpdir(), 'kss-walk-'));
  // What `npm run package` makes after the build that npm test did.
  execFileSync('node', [join(REPO, 'scripts', 'package.mjs')], { stdio: ['ignore', 'ignore', 'pipe'] });
  nas = await startSshNas();
  desktop = await LibvirtHost.start('desktop', join(work, 'desktop'), {}, { ownSystem: true });
  laptop = await LibvirtHost.start('laptop', join(work, 'laptop'), {}, { ownSystem: true });
  // The person's own SSH key, accepted by the NAS account.
  for (const host of [desktop, laptop]) copyFileSync((nas.target.identity as string), host.outside('/root/.ssh/id_ed25519'));
});
after(() => {
  desktop?.stop();
  laptop?.stop();
  nas?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('the README walkthrough, on two simulated machines', () => {
  it('moves a VM with a raw disk from the desktop to the laptop and back', async (t) => {
    if (!desktop && !requireTools(t, ...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS, 'ssh-keyscan')) return;
    const [d, l] = [desktop as LibvirtHost, laptop as LibvirtHost];
    const disk = '/var/lib/libvirt/images/work.img';
    execFileSync('truncate', ['-s', '64M', d.outside(disk)]);
    qemuIoAs('raw', d.outside(disk), 'write -P 0x71 0 4M');
    d.define('work', tinyDomainXml('work', { vda: disk }, false, ['vda']));

    for (const host of [d, l]) assert.match(run(host, 'both'), /^OK    nas /mu, `${host.name}: kss doctor reaches the NAS`);
    const session = (host: LibvirtHost, starting: string, io: string[]) => {
      run(host, starting);
      for (const command of io) host.guestIo('work', command);
      host.mustVirsh('destroy', 'work'); // the guest shuts down
      run(host, 'wait');
    };
    session(d, 'desktop', ['read -P 0x71 0 4M', 'write -P 0x72 8M 4M']);
    session(l, 'laptop', ['read -P 0x71 0 4M', 'read -P 0x72 8M 4M', 'write -P 0x73 16M 4M']);
    session(d, 'back', ['read -P 0x73 16M 4M', 'read -P 0x72 8M 4M']);
  });
});
