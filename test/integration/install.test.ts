// install.sh, run for real as root inside a simulated host (its own /etc, /var, /run and
// /usr/local; a real libvirtd): a fresh install that a person then uses with
// `kss enable` and `virsh start`, a second run, later flags, a foreign qemu hook kept,
// kss doctor on what QEMU's user needs, --uninstall, a copy that fails (the installed hook stays), and one copy of our hook
// whichever of the two places it moves between.
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { readGroups } from '../../lib/accounts.js';
import { NAMESPACE_URI } from '../../lib/namespace.js';
import { MiB, createImage } from '../helpers/disks.js';
import { BINARY } from '../helpers/hosts.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { requireTools } from '../helpers/tools.js';

const INSTALL = resolve('install.sh');
const HOOK = '/etc/libvirt/hooks/qemu';
const BESIDE = '/etc/libvirt/hooks/qemu.d/kvm-snapshot-sync';
const CONFIG = '/etc/kvm-snapshot-sync/config.json';
let work: string;
let host: LibvirtHost | undefined;

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...LIBVIRT_TOOLS)) return;
  work = mkdtempSync(join(tmpdir(), 'kss-install-'));
  host = await LibvirtHost.start('inst', join(work, 'inst'), {}, { bare: true });
});
after(() => {
  host?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function ready(t: TestContext): LibvirtHost | undefined {
  if (!host) requireTools(t, ...LIBVIRT_TOOLS);
  return host;
}

function install(h: LibvirtHost, ...args: string[]): string {
  const run = h.inside([INSTALL, ...args]);
  assert.equal(run.status, 0, `install.sh ${args.join(' ')}: ${run.stderr}`);
  assert.equal(run.stdout, '', 'install.sh writes to stderr only');
  return run.stderr;
}

const sameBytes = (a: string, b: string) => readFileSync(a).equals(readFileSync(b));

/** Starts and destroys the domain; true when our hook was called for it (then waits for that stop's work). */
async function startCallsOurHook(h: LibvirtHost, domain: string): Promise<boolean> {
  const prepares = () => (h.hookLog(domain).match(/op=prepare\/begin/gu) ?? []).length;
  const before = prepares();
  h.mustVirsh('start', domain);
  h.mustVirsh('destroy', domain);
  if (prepares() === before) return false;
  await h.waitForStop(domain);
  return true;
}
const HOOK_DIRS = ['/etc/libvirt/hooks', '/etc/libvirt/hooks/qemu.d'];
const DOCS = [
  '/usr/local/share/man/man1/kss.1',
  '/usr/local/share/man/man1/kvm-snapshot-sync.1',
  '/usr/local/share/bash-completion/completions/kss',
  '/usr/local/share/bash-completion/completions/kvm-snapshot-sync',
  '/usr/local/share/zsh/site-functions/_kss',
];
const LIB = '/usr/local/lib/kvm-snapshot-sync/kvm-snapshot-sync';

/** Every copy of our hook in hooks/ and hooks/qemu.d/ (an executable holding our namespace), by inside path. */
function copiesOfOurHook(h: LibvirtHost): string[] {
  return HOOK_DIRS.flatMap((dir) =>
    existsSync(h.outside(dir))
      ? readdirSync(h.outside(dir))
          .map((name) => `${dir}/${name}`)
          .filter((path) => statSync(h.outside(path)).isFile() && readFileSync(h.outside(path)).includes(NAMESPACE_URI) && readFileSync(h.outside(path)).subarray(0, 4).toString('latin1') === '\x7fELF')
      : [],
  );
}

/** Temporary files of install.sh's left in the hook directories or beside the executable. */
function leftovers(h: LibvirtHost): string[] {
  return [...HOOK_DIRS, '/usr/local/lib/kvm-snapshot-sync'].flatMap((dir) => (existsSync(h.outside(dir)) ? readdirSync(h.outside(dir)).filter((name) => name.includes('kss-new')) : []));
}
const mtimes = (h: LibvirtHost, ...paths: string[]) => paths.map((p) => statSync(h.outside(p)).mtimeMs);

describe('install.sh in a simulated host', () => {
  it('installs everything on a bare host; kss enable and virsh start then work with the local NAS', async (t) => {
    const h = ready(t);
    if (!h) return;
    const said = install(h);
    assert.match(said, /installed the libvirt hook \/etc\/libvirt\/hooks\/qemu/u);
    assert.match(said, /told libvirtd to look for hooks again/u);
    assert.ok(sameBytes(h.outside(HOOK), BINARY), 'the hook is the executable');
    assert.ok(sameBytes(h.outside('/usr/local/lib/kvm-snapshot-sync/kvm-snapshot-sync'), BINARY));
    assert.deepEqual(JSON.parse(readFileSync(h.outside(CONFIG), 'utf8')), { host: 'inst', nas: '/var/lib/kvm-snapshot-sync/nas' });
    assert.equal(statSync(h.outside('/var/lib/kvm-snapshot-sync')).mode & 0o777, 0o700);
    assert.equal(statSync(h.outside('/var/log/kvm-snapshot-sync')).mode & 0o777, 0o750);
    assert.match(h.inside(['kss', '--version']).stdout, /^\d+\.\d+\.\d+\n$/u);
    // The man page and completion, where man, bash-completion and zsh look under /usr/local.
    for (const name of ['kss', 'kvm-snapshot-sync']) {
      const page = h.inside(['man', name], undefined, { MANPAGER: 'cat' });
      assert.equal(page.status, 0, page.stderr);
      assert.match(page.stdout, /^EXIT STATUS$/mu, name);
    }
    for (const file of DOCS) assert.ok(existsSync(h.outside(file)), file);
    const bash = h.inside(['bash', '--norc', '-c', 'source /usr/share/bash-completion/bash_completion; _completion_loader kss; complete -p kss']);
    assert.equal(bash.stdout, 'complete -F _kss kss\n', bash.stderr);
    const zsh = h.inside(['zsh', '-f', '-c', 'autoload -U compinit && compinit -u -D && print -r -- $_comps[kss]']);
    assert.equal(zsh.stdout, '_kss\n', zsh.stderr);

    const disk = '/var/lib/libvirt/images/vm.qcow2';
    createImage(h.outside(disk), 16 * MiB);
    h.define('vm', tinyDomainXml('vm', { vda: disk }, false));
    const enabled = h.inside(['kss', 'enable', 'vm']);
    assert.equal(enabled.status, 0, enabled.stderr);
    await h.session('vm', ['write -P 0x42 1M 1M']);
    const manifest = JSON.parse(readFileSync(h.outside('/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json'), 'utf8'));
    assert.equal(Object.keys(manifest.generations).length, 2, 'the base and the session reached the local NAS');
    assert.equal(manifest.lease, null);
  });

  it('kss doctor finds everything in order, and says how to fix what is not', async (t) => {
    const h = ready(t);
    if (!h) return;
    const healthy = h.inside(['kss', 'doctor']);
    assert.equal(healthy.status, 0, healthy.stdout + healthy.stderr);
    for (const what of ['config', 'qemu-img', 'ssh', 'zstd', 'openssl', 'nas', 'hook', 'space']) assert.match(healthy.stdout, new RegExp(`^OK    ${what} `, 'mu'));
    assert.match(healthy.stdout, /^OK    hook      \/etc\/libvirt\/hooks\/qemu$/mu);
    assert.doesNotMatch(healthy.stdout, /^WARN  images/mu);

    // What QEMU's user (libvirt-qemu) needs to reach the disks, for that user alone; never x for everyone.
    const kvm = (await readGroups()).find((group) => group.name === 'kvm')?.gid;
    assert.ok(kvm !== undefined, 'libvirt-qemu is in the group kvm');
    const images = '/var/lib/libvirt/images';
    const layers = `${images}/vm.qcow2.layers`;
    const imagesWarning = () => {
      const run = h.inside(['kss', 'doctor']);
      assert.equal(run.status, 0, `a warning only: ${run.stdout}`);
      assert.doesNotMatch(run.stdout, /o\+x/u);
      return run.stdout.split('\n').filter((line, i, all) => line.startsWith('WARN  images') || all[i - 1]?.startsWith('WARN  images')).join('\n');
    };
    try {
      chmodSync(h.outside(images), 0o700);
      assert.equal(imagesWarning(), `WARN  images    ${images} cannot be traversed by libvirt-qemu, the user QEMU runs as: it cannot open the disks below it\n      fix: setfacl -m u:libvirt-qemu:x ${images} (package acl)`);
      chownSync(h.outside(images), 0, kvm); // a group QEMU's user holds
      assert.equal(imagesWarning(), `WARN  images    ${images} cannot be traversed by libvirt-qemu, the user QEMU runs as: it cannot open the disks below it\n      fix: chmod g+x ${images}`);
      chmodSync(h.outside(images), 0o710);
      assert.equal(imagesWarning(), '', 'traversable by libvirt-qemu through its group, by nobody else: nothing to fix');
      chmodSync(h.outside(layers), 0o700); // where QEMU opens the backing files
      assert.equal(imagesWarning(), `WARN  images    ${layers} cannot be traversed by libvirt-qemu, the user QEMU runs as: it cannot open the disks below it\n      fix: setfacl -m u:libvirt-qemu:x ${layers} (package acl)`);
    } finally {
      chownSync(h.outside(images), 0, 0);
      chmodSync(h.outside(images), 0o711);
      chmodSync(h.outside(layers), 0o755);
    }

    const nasGone = h.inside(['kss', 'doctor'], undefined, { KSS_CONFIG: '/etc/kvm-snapshot-sync/elsewhere.json' });
    assert.equal(nasGone.status, 3, 'a missing config file is a configuration error');
    assert.match(nasGone.stdout, /^FAIL  config .*does not exist\n      fix: run install.sh/mu);
    writeFileSync(h.outside('/etc/kvm-snapshot-sync/elsewhere.json'), JSON.stringify({ host: 'inst', nas: '/srv/not-there' }));
    const away = h.inside(['kss', 'doctor'], undefined, { KSS_CONFIG: '/etc/kvm-snapshot-sync/elsewhere.json' });
    assert.equal(away.status, 8, away.stdout);
    assert.match(away.stdout, /^FAIL  nas       the NAS directory \/srv\/not-there does not exist\n      fix: mount the share/mu);
  });

  it('changes nothing when run again, and only the keys that later flags name', async (t) => {
    const h = ready(t);
    if (!h) return;
    const files = [HOOK, '/usr/local/lib/kvm-snapshot-sync/kvm-snapshot-sync', CONFIG];
    const before = mtimes(h, ...files);
    const said = install(h);
    assert.doesNotMatch(said, /installed |created|updated|told libvirtd/u);
    assert.deepEqual(mtimes(h, ...files), before, 'no file was rewritten');

    install(h, '--nas', '/srv/kss', '--ssh-known-hosts', '/root/.ssh/known_hosts');
    assert.deepEqual(JSON.parse(readFileSync(h.outside(CONFIG), 'utf8')), { host: 'inst', nas: '/srv/kss', sshKnownHosts: '/root/.ssh/known_hosts' });
    const bad = h.inside([INSTALL, '--nas', 'not/absolute']);
    assert.notEqual(bad.status, 0);
    assert.match(bad.stderr, /"nas"/u);
    install(h, '--nas', '/var/lib/kvm-snapshot-sync/nas');
    assert.equal(JSON.parse(readFileSync(h.outside(CONFIG), 'utf8')).nas, '/var/lib/kvm-snapshot-sync/nas');
  });

  it('puts its hook beside another program\'s qemu hook, never over it; --uninstall keeps data and config', async (t) => {
    const h = ready(t);
    if (!h) return;
    // A daemon hook that makes each reload take seconds: libvirtd drops a SIGHUP that
    // comes during one, as the next install.sh's would without waiting.
    const slowReload = '/etc/libvirt/hooks/daemon';
    writeFileSync(h.outside(slowReload), '#!/bin/sh\nif [ "$2" = reload ]; then sleep 2; fi\n', { mode: 0o755 });
    t.after(() => rmSync(h.outside(slowReload), { force: true }));
    const said = install(h, '--uninstall');
    assert.match(said, /removed the hook \/etc\/libvirt\/hooks\/qemu/u);
    for (const gone of [HOOK, '/usr/local/bin/kss', '/usr/local/lib/kvm-snapshot-sync', ...DOCS]) assert.ok(!existsSync(h.outside(gone)), `${gone} is removed`);
    const noHook = h.inside([BINARY, 'doctor']);
    assert.equal(noHook.status, 3);
    assert.match(noHook.stdout, /^FAIL  hook      no kvm-snapshot-sync hook in .*\n      fix: run install.sh$/mu);
    for (const kept of [CONFIG, '/var/lib/kvm-snapshot-sync/nas/domains/vm/manifest.json', '/var/log/kvm-snapshot-sync/vm.log']) assert.ok(existsSync(h.outside(kept)), `${kept} is kept`);

    const foreign = '#!/bin/sh\necho "$@" >> /var/lib/libvirt/foreign-hook.log\n';
    writeFileSync(h.outside(HOOK), foreign);
    chmodSync(h.outside(HOOK), 0o755);
    assert.match(install(h), /belongs to another program: left as it is/u);
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), foreign);
    assert.ok(sameBytes(h.outside(BESIDE), BINARY));

    assert.ok(await startCallsOurHook(h, 'vm'), `libvirtd never called the hook install.sh told it about:\n${h.libvirtdLog().slice(-2000)}`);
    await h.session('vm', ['read -P 0x42 1M 1M']);
    assert.match(readFileSync(h.outside('/var/lib/libvirt/foreign-hook.log'), 'utf8'), /^vm prepare begin -$/mu, 'the other hook still runs');

    install(h, '--uninstall');
    assert.ok(!existsSync(h.outside(BESIDE)));
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), foreign, 'and is still there after --uninstall');
  });
  it('leaves the installed executable and hook as they were, and fails, when the new copy does not run or cannot be made', async (t) => {
    const h = ready(t);
    if (!h) return;
    assert.match(readFileSync(INSTALL, 'utf8'), /^set -euo pipefail$/mu, 'install.sh stops at the first failure');
    for (const hook of [HOOK, BESIDE]) rmSync(h.outside(hook), { force: true }); // the other program's hook is gone
    install(h);
    assert.deepEqual(copiesOfOurHook(h), [HOOK]);

    // A build that fails, and one whose injection failed (a plain node that prints its own version).
    for (const [name, body] of [['fails', 'echo "broken" >&2; exit 1'], ['plain-node', 'echo v24.21.0']] as const) {
      const clone = join(work, `clone-${name}`);
      mkdirSync(join(clone, 'dist'), { recursive: true });
      copyFileSync(INSTALL, join(clone, 'install.sh'));
      mkdirSync(join(clone, 'packaging'));
      copyFileSync(resolve('packaging/layout.sh'), join(clone, 'packaging', 'layout.sh'));
      cpSync(resolve('dist/completion'), join(clone, 'dist', 'completion'), { recursive: true });
      copyFileSync(resolve('dist/kss.1'), join(clone, 'dist', 'kss.1'));
      writeFileSync(join(clone, 'dist', 'kvm-snapshot-sync'), `#!/bin/sh\n# ${NAMESPACE_URI}\n${body}\n`, { mode: 0o755 });
      const run = h.inside([join(clone, 'install.sh')]);
      for (const path of [LIB, HOOK]) assert.ok(sameBytes(h.outside(path), BINARY), `${name}: ${path} is as it was`);
      assert.notEqual(run.status, 0, `${name}: install.sh failed`);
      assert.match(run.stderr, /does not run \(--version said .*\): \/usr\/local\/lib\/kvm-snapshot-sync\/kvm-snapshot-sync is left as it was/u, name);
      assert.deepEqual(leftovers(h), [], `${name}: no temporary file is left`);
    }

    // An older hook that must be replaced, in a hooks directory that cannot be written.
    const older = Buffer.concat([readFileSync(BINARY), Buffer.from('an older version')]);
    writeFileSync(h.outside(HOOK), older);
    const mounted = h.inside(['mount', '--bind', '-o', 'ro', '/etc/libvirt/hooks', '/etc/libvirt/hooks']);
    assert.equal(mounted.status, 0, mounted.stderr);
    let run;
    try {
      run = h.inside([INSTALL]);
    } finally {
      h.inside(['umount', '/etc/libvirt/hooks']);
    }
    assert.ok(readFileSync(h.outside(HOOK)).equals(older), 'the older hook is intact');
    assert.notEqual(run.status, 0, `install.sh failed: ${run.stderr}`);
    assert.match(run.stderr, /cannot create a temporary file in \/etc\/libvirt\/hooks: \/etc\/libvirt\/hooks\/qemu is left as it was/u);
    assert.match(install(h), /installed the libvirt hook \/etc\/libvirt\/hooks\/qemu/u, 'and is replaced once it can be');
    assert.ok(sameBytes(h.outside(HOOK), BINARY));
  });

  it('keeps exactly one copy of its hook when it moves between hooks/qemu and hooks/qemu.d, and never removes another program\'s', async (t) => {
    const h = ready(t);
    if (!h) return;
    for (const hook of [HOOK, BESIDE]) rmSync(h.outside(hook), { force: true });
    install(h);
    assert.deepEqual(copiesOfOurHook(h), [HOOK]);
    // Another program's hook comes (over ours): ours goes beside it.
    const foreign = '#!/bin/sh\nexit 0\n';
    writeFileSync(h.outside(HOOK), foreign, { mode: 0o755 });
    assert.match(install(h), /belongs to another program/u);
    assert.deepEqual(copiesOfOurHook(h), [BESIDE]);
    // It goes away again: ours moves back to hooks/qemu, and the copy beside is removed.
    rmSync(h.outside(HOOK));
    const said = install(h);
    assert.deepEqual(copiesOfOurHook(h), [HOOK], 'one copy: libvirt would run both');
    assert.match(said, /installed the libvirt hook \/etc\/libvirt\/hooks\/qemu\n/u);
    assert.match(said, /removed our old copy of the hook \/etc\/libvirt\/hooks\/qemu.d\/kvm-snapshot-sync/u);

    // A copy of ours in qemu.d, and the temporary copy an older install.sh could leave there (libvirt runs it too).
    mkdirSync(h.outside('/etc/libvirt/hooks/qemu.d'), { recursive: true });
    copyFileSync(BINARY, h.outside(BESIDE));
    copyFileSync(BINARY, h.outside(`${BESIDE}.kss-new`));
    chmodSync(h.outside(`${BESIDE}.kss-new`), 0o755);
    install(h);
    assert.deepEqual(copiesOfOurHook(h), [HOOK]);

    // Another program's hook that mentions our namespace is still not ours: it is kept, and so is its place.
    const mentioning = `#!/bin/sh\n# leaves the domains of kvm-snapshot-sync (${NAMESPACE_URI}) to it\ngrep -q '${NAMESPACE_URI}' && exit 0\nexit 0\n`;
    writeFileSync(h.outside(HOOK), mentioning, { mode: 0o755 });
    assert.match(install(h), /belongs to another program/u);
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), mentioning);
    assert.deepEqual(copiesOfOurHook(h), [BESIDE]);
    install(h, '--uninstall');
    assert.equal(readFileSync(h.outside(HOOK), 'utf8'), mentioning, 'and --uninstall keeps it');
    assert.deepEqual(copiesOfOurHook(h), []);
    assert.deepEqual(leftovers(h), []);
  });

  it('removes the temporary copy a cut left for either place, and signals only the daemon its pid file names', async (t) => {
    const h = ready(t);
    if (!h) return;
    install(h);
    // Left by a cut while the copy beside a foreign hook was being made; this run places hooks/qemu.
    writeFileSync(h.outside('/etc/libvirt/hooks/.kvm-snapshot-sync.kss-new.AbC123'), 'half a copy');
    rmSync(h.outside(HOOK));
    install(h);
    assert.deepEqual(leftovers(h), []);

    // A pid file of a daemon that died, naming another process now: it must live on.
    const reload = h.inside(['bash', '-c', `sleep 30 & echo $! > /run/virtqemud.pid; source ${resolve('packaging/layout.sh')}; reload_libvirt; sleep 0.3; kill -0 $! && echo alive; kill $!; rm /run/virtqemud.pid`]);
    assert.equal(reload.stdout, 'alive\n', reload.stderr);
    assert.match(reload.stderr, /told libvirtd to look for hooks again/u, 'libvirtd itself is told');
    assert.doesNotMatch(reload.stderr, /virtqemud/u);
  });
});
