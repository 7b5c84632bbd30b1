// The Debian package (scripts/package.mjs), for real: lintian on it, then apt-get install
// on a bare simulated host with its own /usr and /var (dpkg's database included) and a
// real libvirtd, with another program's qemu hook already there; kss enable and virsh
// start; man kss and completion for bash and zsh; an upgrade to a newer build; apt remove;
// apt purge.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { appendFileSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { MiB, createImage } from '../helpers/disks.js';
import { BINARY } from '../helpers/hosts.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { requireTools } from '../helpers/tools.js';

const VERSION = (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version;
const NEWER = `${VERSION}+1`;
const HOOK = '/etc/libvirt/hooks/qemu';
const BESIDE = '/etc/libvirt/hooks/qemu.d/kvm-snapshot-sync';
const KSS = '/usr/lib/kvm-snapshot-sync/kvm-snapshot-sync';
const CONFIG = '/etc/kvm-snapshot-sync/config.json';
const FOREIGN = '#!/bin/sh\necho "$@" >> /var/lib/libvirt/foreign-hook.log\n';
let work: string;
let host: LibvirtHost | undefined;
let deb: string;
let newerDeb: string;
let newerBuild: string;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS, 'dpkg-deb', 'apt-get', 'lintian', 'man', 'zsh', 'objdump')) return;
  work = mkdtempSync(join(tmpdir(), 'kss-package-test-'));
  deb = join(work, `kvm-snapshot-sync_${VERSION}_amd64.deb`);
  execFileSync('node', [resolve('scripts/package.mjs'), '--out', deb], { stdio: ['ignore', 'ignore', 'pipe'] });
  // A newer build: other bytes that still run (data after an ELF's end is never loaded).
  newerBuild = join(work, 'newer-build');
  copyFileSync(BINARY, newerBuild);
  appendFileSync(newerBuild, 'a newer build');
  newerDeb = join(work, `kvm-snapshot-sync_${NEWER}_amd64.deb`);
  execFileSync('node', [resolve('scripts/package.mjs'), '--version', NEWER, '--executable', newerBuild, '--out', newerDeb], { stdio: ['ignore', 'ignore', 'pipe'] });
  host = await LibvirtHost.start('pkg', join(work, 'pkg'), {}, { ownSystem: true });
  mkdirSync(host.outside('/etc/libvirt/hooks'), { recursive: true });
  writeFileSync(host.outside(HOOK), FOREIGN, { mode: 0o755 });
});
after(() => {
  host?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function ready(t: TestContext): LibvirtHost | undefined {
  if (!host) requireTools(t, ...LIBVIRT_TOOLS, 'dpkg-deb', 'apt-get', 'lintian', 'man', 'zsh', 'objdump');
  return host;
}

/** Runs a command on the host; it must succeed. Returns what it said on stdout and stderr. */
function must(h: LibvirtHost, command: string[], env: Record<string, string> = {}): { stdout: string; stderr: string } {
  const run = h.inside(command, undefined, env);
  assert.equal(run.status, 0, `${command.join(' ')}: ${run.stdout}${run.stderr}`);
  return run;
}
const apt = (h: LibvirtHost, ...args: string[]) => must(h, ['apt-get', '-y', '-q', '--no-install-recommends', ...args], { DEBIAN_FRONTEND: 'noninteractive' });
const exists = (h: LibvirtHost, path: string) => h.inside(['test', '-e', path]).status === 0 || h.inside(['test', '-L', path]).status === 0;
const sameBytes = (h: LibvirtHost, a: string, b: string) => h.inside(['cmp', '-s', a, b]).status === 0;

/** What bash's completion of `line` offers, through bash-completion's own loader, as a person's shell does it. */
function bashCompletes(h: LibvirtHost, line: string): string[] {
  const script = `source /usr/share/bash-completion/bash_completion
_completion_loader kss
COMP_LINE=${JSON.stringify(line)}; read -r -a COMP_WORDS <<<"$COMP_LINE"; [[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((\${#COMP_WORDS[@]} - 1))
_kss kss
printf '%s\\n' "\${COMPREPLY[@]}"`;
  return must(h, ['bash', '--norc', '-c', script]).stdout.split('\n').filter(Boolean);
}

describe('the Debian package', () => {
  it('lintian finds no error in it', (t) => {
    if (!ready(t)) return;
    const run = execFileSync('lintian', ['--tag-display-limit', '0', deb], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    assert.doesNotMatch(run, /^E: /mu, run);
  });

  it('installs with apt-get on a bare host beside another qemu hook; kss enable and virsh start then work', async (t) => {
    const h = ready(t);
    if (!h) return;
    assert.ok(!exists(h, '/usr/bin/kss'), 'a bare host');
    const said = apt(h, 'install', deb);
    assert.match(said.stdout + said.stderr, /installed the libvirt hook \/etc\/libvirt\/hooks\/qemu\.d\/kvm-snapshot-sync/u);
    assert.match(said.stdout + said.stderr, /told libvirtd to look for hooks again/u);
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), FOREIGN, "another program's hook is left as it is");
    assert.ok(sameBytes(h, BESIDE, KSS), 'our hook is a copy of the executable');
    assert.ok(sameBytes(h, KSS, BINARY));
    assert.equal(must(h, ['kss', '--version']).stdout, `${VERSION}\n`);
    assert.equal(must(h, ['kvm-snapshot-sync', '--version']).stdout, `${VERSION}\n`);
    assert.deepEqual(JSON.parse(readFileSync(h.outside(CONFIG), 'utf8')), { host: 'pkg', nas: '/var/lib/kvm-snapshot-sync/nas' });
    assert.equal(must(h, ['stat', '-c', '%a', '/var/lib/kvm-snapshot-sync']).stdout, '700\n');

    const disk = '/var/lib/libvirt/images/vm.qcow2';
    createImage(h.outside(disk), 16 * MiB);
    h.define('vm', tinyDomainXml('vm', { vda: disk }, false));
    must(h, ['kss', 'enable', 'vm']);
    await h.session('vm', ['write -P 0x42 1M 1M']);
    const manifest = JSON.parse(readFileSync(h.outside('/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json'), 'utf8'));
    assert.equal(Object.keys(manifest.generations).length, 2, 'the base and the session reached the local NAS');
    assert.match(readFileSync(h.outside('/var/lib/libvirt/foreign-hook.log'), 'utf8'), /^vm prepare begin -$/mu, 'the other hook still runs');
  });

  it('man kss shows the page made from the command table, with the exit codes and the files', (t) => {
    const h = ready(t);
    if (!h) return;
    // --nj: groff justifies lines by spreading spaces, alternately from the left and the
    // right, so any line before a phrase would change its spacing.
    const page = must(h, ['man', '--nj', 'kss'], { MANPAGER: 'cat', MANWIDTH: '100', LANG: 'C.UTF-8' }).stdout;
    assert.match(page, /^NAME\n\s+kss, kvm-snapshot-sync - keeps KVM virtual machines/mu);
    assert.match(page, /^\s+kss snapshot list domain \[--remote\] \[--json\]$/mu);
    assert.match(page, /^\s+kss resolve domain --keep local\|remote$/mu);
    assert.match(page, /^EXIT STATUS\n(?:.*\n)*?\s+12\s+a start was refused because the VM's definition changed/mu);
    assert.match(page, /^FILES\n\s+\/etc\/kvm-snapshot-sync\/config.json/mu);
    assert.doesNotMatch(page, /kss domains/u, 'a hidden command stays hidden');
    assert.match(must(h, ['man', 'kvm-snapshot-sync'], { MANPAGER: 'cat' }).stdout, /^NAME/mu, 'the other name finds the page too');
  });

  it('completes commands, flags, flag values and the managed domains in bash and zsh', (t) => {
    const h = ready(t);
    if (!h) return;
    assert.deepEqual(bashCompletes(h, 'kss snap'), ['snapshot']);
    assert.deepEqual(bashCompletes(h, 'kss snapshot '), ['list', 'create', 'delete', 'merge']);
    assert.deepEqual(bashCompletes(h, 'kss status --'), ['--json', '--help']);
    assert.deepEqual(bashCompletes(h, 'kss resolve vm --keep '), ['local', 'remote']);
    assert.deepEqual(bashCompletes(h, 'kss start '), ['vm'], 'the domains managed here, from `kss domains`');
    assert.deepEqual(bashCompletes(h, 'kss snapshot delete '), ['vm']);
    assert.deepEqual(bashCompletes(h, 'kss snapshot delete vm '), [], 'a snapshot name is not a domain');

    // zsh finds our function for both names through its own fpath and compinit.
    const zsh = must(h, ['zsh', '-f', '-c', 'autoload -U compinit && compinit -u -D && print -r -- $_comps[kss] $_comps[kvm-snapshot-sync]']).stdout;
    assert.equal(zsh, '_kss _kss\n');
  });

  it('upgrades to a newer build: the executable and the hook are replaced, the configuration and the state stay', async (t) => {
    const h = ready(t);
    if (!h) return;
    must(h, ['kss', 'config', 'set', 'nasChainDepth=12']);
    const config = readFileSync(h.outside(CONFIG), 'utf8');
    const state = readFileSync(h.outside('/var/lib/kvm-snapshot-sync/domains/vm/state.json'), 'utf8');
    apt(h, 'install', newerDeb);
    assert.equal(must(h, ['dpkg-query', '-W', '-f', '${Version}', 'kvm-snapshot-sync']).stdout, NEWER);
    assert.ok(sameBytes(h, KSS, newerBuild), 'the newer executable');
    assert.ok(sameBytes(h, BESIDE, newerBuild), 'and the hook is the newer executable too');
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), FOREIGN);
    assert.equal(readFileSync(h.outside(CONFIG), 'utf8'), config, 'the configuration as the person left it');
    assert.equal(readFileSync(h.outside('/var/lib/kvm-snapshot-sync/domains/vm/state.json'), 'utf8'), state);
    await h.session('vm', ['write -P 0x43 2M 1M']); // still managed: the newer hook runs
    const manifest = JSON.parse(readFileSync(h.outside('/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json'), 'utf8'));
    assert.equal(Object.keys(manifest.generations).length, 3);
  });

  it('puts the hook back when dpkg undoes a remove that prerm had begun (abort-remove)', (t) => {
    const h = ready(t);
    if (!h) return;
    must(h, ['/var/lib/dpkg/info/kvm-snapshot-sync.prerm', 'remove']);
    assert.ok(!exists(h, BESIDE), 'prerm took the hook away');
    const undone = must(h, ['/var/lib/dpkg/info/kvm-snapshot-sync.postinst', 'abort-remove']);
    assert.ok(sameBytes(h, BESIDE, newerBuild), 'the hook is back');
    assert.match(undone.stderr, /told libvirtd to look for hooks again/u);
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), FOREIGN);
  });

  it('apt remove takes the program and our hook away, and keeps the configuration, the state, the logs and the local NAS', (t) => {
    const h = ready(t);
    if (!h) return;
    const said = apt(h, 'remove', 'kvm-snapshot-sync');
    for (const path of [KSS, '/usr/bin/kss', '/usr/bin/kvm-snapshot-sync', BESIDE, '/usr/share/man/man1/kss.1.gz', '/usr/share/bash-completion/completions/kss', '/usr/share/zsh/vendor-completions/_kss']) {
      assert.ok(!exists(h, path), `${path} is gone`);
    }
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), FOREIGN, "another program's hook stays");
    for (const path of [CONFIG, '/var/lib/kvm-snapshot-sync/domains/vm/state.json', '/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json', '/var/log/kvm-snapshot-sync/vm.log']) {
      assert.ok(existsSync(h.outside(path)), `${path} stays`);
    }
    assert.match(said.stdout + said.stderr, /kept \/etc\/kvm-snapshot-sync; kept \/var\/lib\/kvm-snapshot-sync/u);
    assert.match(must(h, ['dpkg-query', '-W', '-f', '${Status}', 'kvm-snapshot-sync']).stdout, /config-files/u);
  });

  it('apt purge removes the configuration too, keeps the state and the local NAS (guest data), and says so', (t) => {
    const h = ready(t);
    if (!h) return;
    const said = apt(h, 'purge', 'kvm-snapshot-sync');
    assert.ok(!existsSync(h.outside('/etc/kvm-snapshot-sync/config.json')), 'the configuration is gone');
    for (const path of ['/var/lib/kvm-snapshot-sync/domains/vm/state.json', '/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json']) {
      assert.ok(existsSync(h.outside(path)), `${path} stays`);
    }
    assert.match(said.stdout + said.stderr, /removed \/etc\/kvm-snapshot-sync; kept \/var\/lib\/kvm-snapshot-sync \(each domain's state and, by default, the local NAS: guest data\)/u);
    assert.equal(h.inside(['dpkg-query', '-W', '-f', '${Status}', 'kvm-snapshot-sync']).stdout.includes('install ok'), false);
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), FOREIGN);
  });
});
