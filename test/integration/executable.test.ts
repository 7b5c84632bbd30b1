// The built single executable (dist/kvm-snapshot-sync, made by `npm run build`, which
// `npm test` runs first): both faces, run the way libvirt and a person run them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, copyFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NAMESPACE_URI } from '../../lib/namespace.js';
import { VERSION } from '../../lib/version.js';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';
import { requireTools } from '../helpers/tools.js';

const BINARY = resolve('dist/kvm-snapshot-sync');
let root: string;

/** The environment libvirt gives a hook (LC_ALL, PATH, HOME, USER), plus our config. */
function hookEnv(config?: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { LC_ALL: 'C', PATH: '/usr/bin:/bin', HOME: '/root', USER: 'root' };
  if (config) env.KSS_CONFIG = config;
  return env;
}

function run(program: string, args: string[], input = '', env: NodeJS.ProcessEnv = hookEnv()) {
  return spawnSync(program, args, { input, env, encoding: 'utf8', timeout: 20_000 });
}

function domainXml(name: string, managed: boolean, diskPath = '/nonexistent/disk.qcow2'): string {
  const metadata = managed ? `<metadata><kss:sync xmlns:kss="${NAMESPACE_URI}"/></metadata>` : '';
  return `<domain type='kvm'><name>${name}</name>${metadata}<devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${diskPath}'/><target dev='vda' bus='virtio'/></disk>
  </devices></domain>`;
}

before(() => {
  assert.ok(existsSync(BINARY), `${BINARY} is missing: run npm run build`);
  root = mkdtempSync(join(tmpdir(), 'kss-exe-'));
});
after(async () => {
  // A release spawns the background work after a stop: let it finish before cleaning up.
  for (const log of ['log/my%20vm.log', 'log2/vm2.log']) {
    const file = join(root, log);
    for (let i = 0; i < 100 && existsSync(file) && readFileSync(file, 'utf8').includes('release/end') && !readFileSync(file, 'utf8').includes('stop finished'); i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  rmSync(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
});

describe('the executable', () => {
  it('prints its version with an empty environment (no Node needed)', () => {
    const result = spawnSync(BINARY, ['--version'], { env: {}, encoding: 'utf8' });
    assert.equal(result.status, 0);
    assert.equal(result.stdout.trim(), VERSION);
    assert.doesNotMatch(result.stdout, /^v\d+\./u, 'not a plain node binary');
  });

  it('is the CLI under its own name and as kss, with help', () => {
    const kss = join(root, 'kss');
    symlinkSync(BINARY, kss);
    for (const program of [BINARY, kss]) {
      const help = run(program, ['--help']);
      assert.equal(help.status, 0);
      assert.match(help.stdout, /Usage: kss <command>/);
      assert.match(help.stdout, /kss chain <disk>/);
    }
  });

  it('rejects a bad command line with exit 2 and a remedy', () => {
    const result = run(BINARY, ['no-such-command']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /kss: error: .*\nTo fix: run `kss --help`/s);
    assert.equal(result.stdout, '');
  });

  it('reports a missing config file with exit 3', () => {
    const result = run(BINARY, ['config', '--config', join(root, 'none.json')]);
    assert.equal(result.status, 3);
    assert.match(result.stderr, /none\.json does not exist\nTo fix: run install\.sh/);
  });

  it('shows a validated config', () => {
    const file = join(root, 'config.json');
    writeFileSync(file, JSON.stringify({ nas: 'ssh://kss@nas:2222/srv/kss', host: 'desk' }));
    const result = run(BINARY, ['config', '--json'], '', hookEnv(file));
    assert.equal(result.status, 0, result.stderr);
    const shown = JSON.parse(result.stdout) as { host: string; nas: { port: number }; maxChainDepth: number };
    assert.equal(shown.host, 'desk');
    assert.equal(shown.nas.port, 2222);
    assert.equal(shown.maxChainDepth, 8);
  });

  it('shows and checks a disk chain on a path with spaces and quotes', (t) => {
    if (!requireTools(t, 'qemu-img', 'qemu-io')) return;
    const disk = join(root, `my "vm" 's disk.qcow2`);
    createImage(disk, 8 * MiB);
    qemuIo(disk, 'write -P 0x01 0 1M');
    const chain = run(BINARY, ['chain', disk, '--json']);
    assert.equal(chain.status, 0, chain.stderr);
    assert.equal((JSON.parse(chain.stdout) as Array<{ path: string }>)[0]?.path, disk);
    const check = run(BINARY, ['check', disk]);
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stdout, /0 corruptions/);
  });
});

describe('the hook face', () => {
  let hookDir: string;
  let hook: string;
  before(() => {
    hookDir = join(root, 'hooks');
    mkdirSync(join(hookDir, 'qemu.d'), { recursive: true });
    hook = join(hookDir, 'qemu');
    copyFileSync(BINARY, hook);
  });

  const unhandled = [
    ['prepare', 'begin', 'an unmanaged domain'],
    ['start', 'begin', 'an unhandled operation'],
    ['reconnect', 'begin', 'reconnect'],
    ['migrate', 'begin', 'migrate (stdout is read back as XML)'],
  ];
  for (const [op, subop, what] of unhandled) {
    it(`exits 0 with nothing on stdout for ${what}`, () => {
      const managed = op !== 'prepare';
      const result = run(hook, ['vm1', op as string, subop as string, '-'], domainXml('vm1', managed), hookEnv(join(root, 'missing.json')));
      assert.equal(result.status, 0, result.stderr);
      assert.equal(result.stdout, '');
      assert.equal(result.stderr, '', 'and reads no config for a call it does not handle');
    });
  }

  it('is also the hook as a symlink named qemu, in qemu.d, and as `kss hook qemu`', () => {
    const link = join(root, 'qemu');
    symlinkSync(BINARY, link);
    const inDir = join(hookDir, 'qemu.d', 'kvm-snapshot-sync');
    copyFileSync(BINARY, inDir);
    const broken = hookEnv(join(root, 'missing.json'));
    for (const [program, args] of [
      [link, ['vm1', 'prepare', 'begin', '-']],
      [inDir, ['vm1', 'prepare', 'begin', '-']],
      [BINARY, ['hook', 'qemu', 'vm1', 'prepare', 'begin', '-']],
    ] as const) {
      // A managed domain with no config: a hook refuses the start; a CLI would print help.
      const result = run(program, [...args], domainXml('vm1', true), broken);
      assert.equal(result.status, 3, `${program}: ${result.stderr}`);
      assert.equal(result.stdout, '');
      assert.match(result.stderr, /^kss: error: configuration file .*missing\.json does not exist\nTo fix: run install\.sh/);
    }
  });

  it('refuses to start a managed domain that is nowhere yet, says what to run, and logs it', (t) => {
    if (!requireTools(t, 'qemu-img')) return;
    const disk = join(root, 'managed disk.qcow2');
    createImage(disk, 8 * MiB);
    const logDir = join(root, 'log');
    mkdirSync(join(root, 'nas'));
    const config = join(root, 'hook-config.json');
    writeFileSync(config, JSON.stringify({ nas: join(root, 'nas'), host: 'desk', logDir, stateDir: join(root, 'state') }));
    const xml = domainXml('my vm', true, disk);
    const prepare = run(hook, ['my vm', 'prepare', 'begin', '-'], xml, hookEnv(config));
    assert.equal(prepare.status, 5, prepare.stderr);
    assert.equal(prepare.stdout, '');
    assert.equal(prepare.stderr, 'kss: error: my vm has nothing on the NAS and no local generation\nTo fix: kss enable my vm\n');
    const log = readFileSync(join(logDir, 'my%20vm.log'), 'utf8');
    assert.match(log, /INFO  hook call domain="my vm" op=prepare\/begin pid=\d+ extra=-/);
    assert.match(log, /ERROR my vm has nothing on the NAS/);
    for (const [op, subop] of [['release', 'end'], ['restore', 'begin']]) {
      const result = run(hook, ['my vm', op as string, subop as string, '-'], xml, hookEnv(config));
      assert.equal(result.status, 0, result.stderr);
      assert.equal(result.stdout, '', `${op} ${subop} writes nothing on stdout`);
    }
  });

  it('refuses a start when the NAS is unreachable and the lease is not held here, but never fails a release', () => {
    const config = join(root, 'hook-config2.json');
    writeFileSync(config, JSON.stringify({ nas: join(root, 'no-such-nas'), logDir: join(root, 'log2'), stateDir: join(root, 'state2') }));
    const xml = domainXml('vm2', true, join(root, 'missing.qcow2'));
    const prepare = run(hook, ['vm2', 'prepare', 'begin', '-'], xml, hookEnv(config));
    assert.equal(prepare.status, 8);
    assert.match(prepare.stderr, /^kss: error: the NAS cannot be reached and this host does not hold vm2's lease.*\nTo fix: start it without syncing on purpose: kss start vm2 --no-sync\n$/su);
    const release = run(hook, ['vm2', 'release', 'end', '-'], xml, hookEnv(config));
    assert.equal(release.status, 0);
    assert.equal(release.stdout, '');
  });
});
