// KSS_STEAL_LEASE / KSS_NO_SYNC read from a local `virsh start VM`, on the real /proc,
// with real processes: someone else's process that merely calls itself virsh (the attack
// of the issue "Nothing on the NAS can harm a host": an unprivileged user's interpreter
// named virsh, `start work` in its argv, KSS_STEAL_LEASE=1 in its environment, while root
// starts the VM from a client that is no virsh) is ignored; the real virsh of root, or of
// a member of the group libvirt, is believed. The real virsh is kept running by giving
// it a libvirt socket that accepts and never answers.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { readGroups } from '../../lib/accounts.js';
import { readClientEnvironment } from '../../lib/sync/client-env.js';
import { isVirshStart } from '../../lib/sync/client-trust.js';
import { requireTools } from '../helpers/tools.js';

const TOOLS = ['virsh', 'setpriv', 'unshare', 'perl', 'tail'];
const domain = `kss-client-env-${process.pid}`;
const NOBODY = 65534;
let work: string;
let uri: string;
let stalled: Server | undefined;
const held = new Set<Socket>();
const running = new Set<ChildProcess>();

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'kss-client-env-'));
  chmodSync(work, 0o755); // nobody's virsh must reach the socket
  const socket = join(work, 'libvirt-sock');
  stalled = createServer((connection) => {
    held.add(connection);
    connection.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => stalled!.listen(socket, resolve));
  chmodSync(socket, 0o777);
  uri = `qemu+unix:///system?socket=${socket}`;
});
after(async () => {
  for (const child of running) child.kill('SIGKILL');
  for (const connection of held) connection.destroy();
  await new Promise((resolve) => (stalled ? stalled.close(resolve) : resolve(undefined)));
  if (work) rmSync(work, { recursive: true, force: true });
});

type As = 'root' | 'nobody' | 'nobody in libvirt';

/** Starts `argv` as that user with a clean environment plus `env`, and waits until its argv is a `virsh start` of the domain. */
async function client(as: As, argv: string[], env: Record<string, string>, wrap: string[] = []): Promise<ChildProcess> {
  const libvirt = (await readGroups()).find((group) => group.name === 'libvirt')?.gid;
  const user =
    as === 'root'
      ? []
      : ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, ...(as === 'nobody' ? ['--clear-groups'] : [`--groups=${libvirt}`]), '--'];
  const environment = Object.entries({ HOME: work, PATH: '/usr/bin:/bin', ...env }).map(([name, value]) => `${name}=${value}`);
  const [file, ...args] = [...wrap, ...user, 'env', '-i', ...environment, ...argv] as [string, ...string[]];
  const child = spawn(file, args, { stdio: 'ignore' });
  running.add(child);
  child.on('exit', () => running.delete(child));
  // setpriv, env, unshare and bash's exec all keep the pid: wait until it runs the client.
  for (let tries = 0; ; tries += 1) {
    const cmdline = (() => {
      try {
        return readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      } catch {
        return [];
      }
    })();
    if (isVirshStart(cmdline, domain)) break;
    assert.ok(tries < 100 && child.exitCode === null, `${argv.join(' ')} did not come up as a virsh start of ${domain}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await new Promise((resolve) => setTimeout(resolve, 300)); // a real virsh that could not connect would have ended by now
  assert.equal(child.exitCode, null, `${argv.join(' ')} ended early`);
  return child;
}

function stop(child: ChildProcess): void {
  child.kill('SIGKILL');
}

const realVirsh = () => ['virsh', '-c', uri, 'start', domain];
/** An interpreter that calls itself virsh: perl, as the python. */
const perlNamedVirsh = () => ['bash', '-c', 'exec -a virsh perl -e "sleep 600" start "$0"', domain];

function ready(t: TestContext): boolean {
  if (!requireTools(t, ...TOOLS)) return false;
  assert.equal(process.getuid?.(), 0, 'this test runs as root (it starts processes as nobody)');
  return true;
}

describe('readClientEnvironment on the real /proc', () => {
  it('ignores an unprivileged process that calls itself virsh and asks to steal the lease (the attack)', async (t) => {
    if (!ready(t)) return;
    const fake = await client('nobody', perlNamedVirsh(), { KSS_STEAL_LEASE: '1' });
    try {
      const result = await readClientEnvironment(domain);
      assert.equal(result.stealLease, false, `believed: ${result.note}`);
      assert.match(result.note, new RegExp(`^no trusted virsh start client \\(ignored: pid ${fake.pid} is named virsh but does not run the virsh binary\\)$`, 'u'));
    } finally {
      stop(fake);
    }
  });

  it('ignores a copy of another program renamed virsh, even run by root', async (t) => {
    if (!ready(t)) return;
    const copy = join(work, 'virsh');
    copyFileSync('/usr/bin/tail', copy);
    chmodSync(copy, 0o755);
    const fake = await client('root', [copy, '-f', '/dev/null', 'start', domain], { KSS_NO_SYNC: '1' });
    try {
      const result = await readClientEnvironment(domain);
      assert.equal(result.skipSync, false, `believed: ${result.note}`);
      assert.match(result.note, new RegExp(`pid ${fake.pid} is named virsh but does not run the virsh binary`, 'u'));
    } finally {
      stop(fake);
    }
  });

  it('ignores the real virsh run by a user outside the group libvirt', async (t) => {
    if (!ready(t)) return;
    const other = await client('nobody', realVirsh(), { KSS_STEAL_LEASE: '1' });
    try {
      const result = await readClientEnvironment(domain);
      assert.equal(result.stealLease, false, `believed: ${result.note}`);
      assert.match(result.note, new RegExp(`pid ${other.pid} runs as uid ${NOBODY}, neither root nor in group libvirt`, 'u'));
    } finally {
      stop(other);
    }
  });

  it('believes the real virsh of root, with an impostor running beside it, and of a member of the group libvirt', async (t) => {
    if (!ready(t)) return;
    assert.ok((await readGroups()).some((group) => group.name === 'libvirt'), 'the group libvirt exists (libvirt-daemon-system)');
    const fake = await client('nobody', perlNamedVirsh(), { KSS_NO_SYNC: '1' });
    try {
      const root = await client('root', realVirsh(), { KSS_STEAL_LEASE: '1' });
      try {
        const result = await readClientEnvironment(domain);
        assert.deepEqual({ skipSync: result.skipSync, stealLease: result.stealLease }, { skipSync: false, stealLease: true }, result.note);
        assert.match(result.note, new RegExp(`^virsh start client pid ${root.pid} \\(root\\) \\(ignored: pid ${fake.pid} `, 'u'));
      } finally {
        stop(root);
      }
    } finally {
      stop(fake);
    }
    const member = await client('nobody in libvirt', realVirsh(), { KSS_NO_SYNC: 'yes' });
    try {
      const result = await readClientEnvironment(domain);
      assert.deepEqual(result, { skipSync: true, stealLease: false, note: `virsh start client pid ${member.pid} (uid ${NOBODY}, group libvirt)` });
    } finally {
      stop(member);
    }
  });

  it('leaves out a real virsh in another mount namespace', async (t) => {
    if (!ready(t)) return;
    const elsewhere = await client('root', realVirsh(), { KSS_STEAL_LEASE: '1' }, ['unshare', '--mount', '--propagation', 'private', '--']);
    try {
      assert.deepEqual(await readClientEnvironment(domain), { skipSync: false, stealLease: false, note: 'no local virsh start client' });
    } finally {
      stop(elsewhere);
    }
  });
});
