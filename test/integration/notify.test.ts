// What the person at the machine sees: desktop notifications from the hook's start and
// from the stop work, on two simulated hosts with real libvirtd and an SSH NAS behind a
// slow link (80 Mbit/s: a start that moves 48 MiB waits some 5 s). Each host has a
// person at its screen: a real session bus (dbus-daemon --session, as user nobody, at
// /run/user/65534/bus) with a real notification server on it
// (test/fixtures/notification-server.py, which records every Notify call), reached
// through the real notify-send. Only logind is stood in for, by a loginctl that
// answers as logind does for one active Wayland session: logind cannot run without
// systemd, which this machine lacks (platform.md); the real loginctl's failure here is
// what every other test's hook meets, and it must not fail a start.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, it, type TestContext } from 'node:test';
import { readConfig } from '../../lib/config.js';
import { Logger } from '../../lib/log.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { guestDigest } from '../helpers/disks.js';
import { LIBVIRT_TOOLS, LibvirtHost, tinyDomainXml } from '../helpers/libvirt-host.js';
import { startLibvirtPair, type LibvirtPair } from '../helpers/libvirt-pair.js';
import { SSH_NAS_TOOLS } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const TOOLS = [...LIBVIRT_TOOLS, ...SSH_NAS_TOOLS, 'dbus-daemon', 'notify-send', 'setpriv', '/usr/bin/python3'];
const NOBODY = 65534;
const RUNTIME = `/run/user/${NOBODY}`;
const RECORD = `${RUNTIME}/notices.jsonl`;
const DISK = '/var/lib/libvirt/images/work.qcow2';
const MiB = 2 ** 20;

/** How logind's loginctl (systemd 252) answers for one person at the screen, in session 2. */
const LOGINCTL = `#!/bin/sh
case "$1" in
  list-sessions) echo "      2 ${NOBODY} nobody seat0 tty2" ;;
  show-session) [ "$2" = 2 ] || exit 1; printf 'Name=nobody\\nUser=${NOBODY}\\nType=wayland\\nClass=user\\nActive=yes\\nRemote=no\\nState=active\\n' ;;
  *) exit 1 ;;
esac
`;

interface Recorded {
  app: string;
  replaces: number;
  id: number;
  summary: string;
  body: string;
  urgency: number;
}

let pair: LibvirtPair | undefined;

/** Sets up a person at the host's screen: logind's answer, their runtime directory, session bus and notification server. */
async function seatPerson(host: LibvirtHost): Promise<void> {
  writeFileSync(host.outside('/var/lib/libvirt/loginctl'), LOGINCTL, { mode: 0o755 });
  const mounted = host.inside(['mount', '--bind', '/var/lib/libvirt/loginctl', '/usr/bin/loginctl']);
  assert.equal(mounted.status, 0, mounted.stderr);
  mkdirSync(host.outside(RUNTIME), { recursive: true });
  chownSync(host.outside(RUNTIME), NOBODY, NOBODY);
  chmodSync(host.outside(RUNTIME), 0o700);
  const asNobody = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', '--'];
  host.spawnInside([...asNobody, 'dbus-daemon', '--session', `--address=unix:path=${RUNTIME}/bus`, '--nofork', '--nopidfile']);
  await until(() => existsSync(host.outside(`${RUNTIME}/bus`)), 10_000, 'the session bus');
  const server = host.spawnInside([...asNobody, '/usr/bin/python3', '-c', readFileSync('test/fixtures/notification-server.py', 'utf8'), RECORD], {
    DBUS_SESSION_BUS_ADDRESS: `unix:path=${RUNTIME}/bus`,
  });
  let said = '';
  server.stdout.setEncoding('utf8').on('data', (text: string) => (said += text));
  server.stderr.setEncoding('utf8').on('data', (text: string) => (said += text));
  await until(() => said.includes('ready'), 10_000, `the notification server (${said})`);
}

/** The Notify calls the host's notification server has had. */
function notices(host: LibvirtHost): Recorded[] {
  const file = host.outside(RECORD);
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as Recorded);
}

async function until(done: () => boolean, timeoutMs: number, what: string): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !done(); ) {
    if (Date.now() > deadline) throw new Error(`no ${what} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

before(async (t) => {
  if (!requireTools(t as unknown as TestContext, ...TOOLS)) return;
  pair = await startLibvirtPair('kss-notify-', { rate: '80mbit' });
  for (const host of [pair.desk, pair.laptop]) await seatPerson(host);
});
after(() => pair?.stop());

describe('desktop notifications', () => {
  it('tells the person at each machine what a start waits for, how much moves and when, and when the work is on the NAS', async (t) => {
    if (pair === undefined && !requireTools(t, ...TOOLS)) return;
    const { desk, laptop } = pair as LibvirtPair;
    // 48 MiB that no compression shrinks: the first start pushes it, the laptop's pulls it.
    const raw = desk.outside('/var/lib/libvirt/images/work.raw');
    writeFileSync(raw, randomBytes(48 * MiB));
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', raw, desk.outside(DISK)]);
    const config = { ...(await readConfig(desk.outside('/etc/kvm-snapshot-sync/config.json'))), stateDir: desk.outside('/var/lib/kvm-snapshot-sync') };
    await enableDisks('work', { vda: desk.outside(DISK) }, { config, log: new Logger([]) });
    for (const host of [desk, laptop]) host.define('work', tinyDomainXml('work', { vda: DISK }, true));

    const started = (host: LibvirtHost) => until(() => notices(host).some((notice) => notice.summary === 'work is starting'), 10_000, `last notice of the start on ${host.name}`);
    desk.mustVirsh('start', 'work');
    await started(desk);
    const pushing = notices(desk);
    assert.ok(pushing.length >= 3, `a first notice, an update and the last:\n${JSON.stringify(pushing, null, 1)}`);
    const [first, ...rest] = pushing;
    assert.deepEqual([first?.app, first?.summary, first?.replaces, first?.urgency], ['kvm-snapshot-sync', 'Starting work: waiting', 0, 0]);
    assert.ok(rest.every((notice) => notice.replaces === first?.id && notice.id === first?.id), 'every later notice replaces the first: one notification, updated');
    assert.match(pushing.map((notice) => notice.body).join('\n'), /^pushing this machine's last session to the NAS first\npush vda [0-9a-f]{12}: [\d.]+ MiB of 48\.\d MiB \(\d+%\), [\d.]+ MB\/s, \d+s left$/mu);
    assert.deepEqual([pushing.at(-1)?.summary, pushing.at(-1)?.urgency], ['work is starting', 1]);
    assert.match(pushing.at(-1)?.body ?? '', /^in step with the NAS after \d+s, 48\.\d MiB moved$/u);

    desk.guestIo('work', 'write -P 0x5a 1M 1M');
    desk.mustVirsh('destroy', 'work');
    await desk.waitForStop('work');
    await until(() => notices(desk).length > pushing.length, 10_000, 'notice after the stop');
    const stopped = notices(desk).slice(pushing.length);
    assert.deepEqual(
      stopped.map((notice) => [notice.summary, notice.body, notice.replaces]),
      [['work is on the NAS: safe to switch machines', 'work: this session is on the NAS; another machine can start it now.', 0]],
    );

    laptop.mustVirsh('start', 'work');
    await started(laptop);
    const pulling = notices(laptop);
    assert.equal(pulling[0]?.summary, 'Starting work: waiting');
    assert.match(pulling.map((notice) => notice.body).join('\n'), /^fetching the newest state from the NAS\npull vda [0-9a-f]{12}: [\d.]+ MiB of 48\.\d MiB/mu);
    assert.equal(pulling.at(-1)?.summary, 'work is starting');
    laptop.guestIo('work', 'read -P 0x5a 1M 1M');

    // Told not to, a host tells nothing: the stop work's log says it is done, and its notice would have come before that.
    laptop.kss(['config', 'set', 'notify=false']);
    laptop.mustVirsh('destroy', 'work');
    await laptop.waitForStop('work');
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert.equal(notices(laptop).length, pulling.length, 'notify=false: no notice after the stop');
    assert.doesNotMatch(laptop.hookLog('work'), /could not show a desktop notification|no desktop notification/u);
    assert.equal(guestDigest(laptop.outside(DISK)), guestDigest(desk.outside(DISK)), 'both hosts hold the same bytes');
  });
});
