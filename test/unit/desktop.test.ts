// The desktop notices (lib/desktop/): finding the person at the machine from loginctl's
// output, the notify-send command and its replacement chain, and when a start tells what.
// The real bus, notify-send and a notification server are in test/integration/notify.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { desktopNotifier, escapeMarkup, notifySendCommand, type Notice } from '../../lib/desktop/notifier.js';
import { START_NOTICE_DELAY_MS, failedStopNotice, startNotices, stopNotice, type Timers } from '../../lib/desktop/notices.js';
import { isActiveGraphical, parsePasswd, parseProperties, parseSessionIds, type DesktopSession } from '../../lib/desktop/session.js';
import { Logger } from '../../lib/log.js';
import type { UnwaitedResult } from '../../lib/runner.js';

const SESSION: DesktopSession = { id: '2', user: 'alice', uid: 1000, gid: 1000, home: '/home/alice', bus: 'unix:path=/run/user/1000/bus', runtimeDir: '/run/user/1000' };

/** Timers that run only when the test moves the clock. */
function manualTimers(): Timers & { advance(ms: number): void } {
  let now = 0;
  let timers: Array<{ at: number; run: () => void; unref: () => void }> = [];
  return {
    now: () => now,
    setTimeout(run, ms) {
      const timer = { at: now + ms, run, unref: () => undefined };
      timers.push(timer);
      return timer;
    },
    clearTimeout(timer) {
      timers = timers.filter((t) => t !== timer);
    },
    advance(ms) {
      const until = now + ms;
      for (let due = timers.find((t) => t.at <= until); due; due = timers.find((t) => t.at <= until)) {
        timers = timers.filter((t) => t !== due);
        now = due.at;
        due.run();
      }
      now = until;
    },
  };
}

const report = (done: number, total: number) => ({ done, total, bytesPerSecond: 10 * 2 ** 20, etaSeconds: (total - done) / (10 * 2 ** 20), finished: done === total });

describe('finding the person at the machine', () => {
  it("reads the session ids of loginctl list-sessions, whatever the columns' padding", () => {
    assert.deepEqual(parseSessionIds('      2 1000 alice seat0 tty2\n     c1  120 Debian-gdm seat0 tty1\n\n'), ['2', 'c1']);
    assert.deepEqual(parseSessionIds(''), []);
  });

  it('takes only an active, local, graphical session of a user', () => {
    const desk = parseProperties('Name=alice\nUser=1000\nType=wayland\nClass=user\nActive=yes\nRemote=no\nState=active\n');
    assert.equal(desk.Name, 'alice');
    assert.equal(isActiveGraphical(desk), true);
    assert.equal(isActiveGraphical({ ...desk, Type: 'x11' }), true);
    for (const [key, value] of [['Type', 'tty'], ['Active', 'no'], ['Remote', 'yes'], ['Class', 'greeter'], ['State', 'online']] as const) {
      assert.equal(isActiveGraphical({ ...desk, [key]: value }), false, `${key}=${value}`);
    }
  });

  it("reads the user's group and home from getent passwd, only on their own line", () => {
    assert.deepEqual(parsePasswd('alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash\n', 1000), { gid: 1001, home: '/home/alice' });
    assert.equal(parsePasswd('bob:x:1002:1002::/home/bob:/bin/bash', 1000), undefined);
    assert.equal(parsePasswd('', 1000), undefined);
  });
});

describe('notify-send', () => {
  it("runs as the session's user, without root's groups or privileges, the body's markup escaped", () => {
    const command = notifySendCommand(SESSION, { summary: 'vm <1>', body: 'a <b>bold</b> & more' }, '7');
    assert.equal(command.file, 'setpriv');
    assert.deepEqual(command.args.slice(0, 6), ['--reuid=1000', '--regid=1000', '--clear-groups', '--no-new-privs', '--', 'notify-send']);
    assert.ok(command.args.includes('--replace-id=7'));
    assert.ok(command.args.includes('--print-id'));
    assert.deepEqual(command.args.slice(-3), ['--', 'vm <1>', 'a &lt;b&gt;bold&lt;/b&gt; &amp; more']);
    assert.ok(!notifySendCommand(SESSION, { summary: 's', body: 'b' }, undefined).args.some((arg) => arg.startsWith('--replace-id')));
    assert.equal(escapeMarkup('&amp;'), '&amp;amp;');
  });

  /** A notifier whose notify-send calls are recorded and answered by the test. */
  function recorded(session: DesktopSession | undefined) {
    const calls: Array<{ args: readonly string[]; env: NodeJS.ProcessEnv; answer: (result: UnwaitedResult) => void }> = [];
    const logged: string[] = [];
    const notifier = desktopNotifier(new Logger([(entry) => void logged.push(entry.message)]), {
      find: async () => session,
      run: (command, options, done = () => undefined) => void calls.push({ args: command.args, env: options.env, answer: done }),
    });
    return { notifier, calls, logged, summaries: () => calls.map((call) => call.args.at(-2)) };
  }
  const notice = (summary: string): Notice => ({ summary, body: '' });

  it("shows each notice in place of the last, by the id notify-send printed, on the user's bus", async () => {
    const { notifier, calls, summaries } = recorded(SESSION);
    notifier.show(notice('one'));
    await notifier.settled(1000);
    assert.equal(calls.length, 1);
    assert.equal(calls[0]?.env.DBUS_SESSION_BUS_ADDRESS, 'unix:path=/run/user/1000/bus');
    assert.equal(calls[0]?.env.HOME, '/home/alice');
    assert.ok(!calls[0]?.args.some((arg) => arg.startsWith('--replace-id')));
    calls[0]?.answer({ stdout: '41\n', exitCode: 0 });
    notifier.show(notice('two'));
    assert.ok(calls[1]?.args.includes('--replace-id=41'), String(calls[1]?.args));
    assert.deepEqual(summaries(), ['one', 'two']);
  });

  it('while one is being handed over, keeps only the newest update, and hands a final notice over at once', async () => {
    const { notifier, calls, summaries } = recorded(SESSION);
    notifier.show(notice('one'));
    await notifier.settled(1000);
    notifier.show(notice('two'));
    notifier.show(notice('three'));
    assert.deepEqual(summaries(), ['one'], 'nothing more while notify-send runs');
    calls[0]?.answer({ stdout: '5\n', exitCode: 0 });
    assert.deepEqual(summaries(), ['one', 'three']);
    notifier.show(notice('done'), { final: true });
    assert.deepEqual(summaries(), ['one', 'three', 'done'], 'a final notice does not wait');
    assert.ok(calls[2]?.args.includes('--replace-id=5'));
    assert.deepEqual(calls[2]?.args.slice(5, 9), ['sh', '-c', 'sleep 0.5 && exec notify-send "$@"', 'notify-send'], 'but its notify-send starts after the update under way');
    assert.equal(calls[1]?.args[5], 'notify-send', 'an update waits for none');
  });

  it('shows nothing when nobody sits at the machine, and says once in the log why notify-send failed', async () => {
    const nobody = recorded(undefined);
    nobody.notifier.show(notice('one'));
    await nobody.notifier.settled(1000);
    nobody.notifier.show(notice('two'), { final: true });
    assert.equal(nobody.calls.length, 0);

    const { notifier, calls, logged } = recorded(SESSION);
    notifier.show(notice('one'));
    await notifier.settled(1000);
    calls[0]?.answer({ stdout: '', exitCode: 127, error: 'spawn setpriv ENOENT' });
    notifier.show(notice('two'));
    calls[1]?.answer({ stdout: '', exitCode: 1 });
    assert.deepEqual(logged, ['could not show a desktop notification']);
  });
});

describe('what a start tells', () => {
  /** A start's notices over manual timers, and what they showed. */
  function start() {
    const shown: Array<{ notice: Notice; final: boolean }> = [];
    const timers = manualTimers();
    const notices = startNotices('work', { show: (notice, options) => void shown.push({ notice, final: options?.final === true }), settled: async () => undefined }, timers);
    return { notices, shown, timers };
  }

  it('tells nothing of a start that is done within the first seconds', () => {
    const { notices, shown, timers } = start();
    notices.waitingFor('fetching the newest state from the NAS');
    notices.progress('pull vda 3f2a', report(50, 100));
    timers.advance(START_NOTICE_DELAY_MS - 1);
    notices.finish();
    timers.advance(60_000);
    assert.deepEqual(shown, []);
  });

  it('tells what it waits for and what moves, how much and how long still, updated at most every 2 s, then that it is done', () => {
    const { notices, shown, timers } = start();
    notices.waitingFor('fetching the newest state from the NAS');
    timers.advance(START_NOTICE_DELAY_MS);
    assert.equal(shown.length, 1);
    assert.equal(shown[0]?.notice.summary, 'Starting work: waiting');
    assert.equal(shown[0]?.notice.body, 'fetching the newest state from the NAS');
    notices.progress('pull vda 3f2a', report(20 * 2 ** 20, 100 * 2 ** 20));
    notices.progress('pull vda 3f2a', report(30 * 2 ** 20, 100 * 2 ** 20));
    assert.equal(shown.length, 1, 'not sooner than 2 s after the last');
    timers.advance(2000);
    assert.equal(shown.length, 2);
    assert.equal(shown[1]?.notice.body, 'fetching the newest state from the NAS\npull vda 3f2a: 30.0 MiB of 100.0 MiB (30%), 10.5 MB/s, 7s left');
    timers.advance(10_000);
    assert.equal(shown.length, 2, 'nothing new, nothing shown');
    notices.progress('pull vda 3f2a', report(100 * 2 ** 20, 100 * 2 ** 20));
    assert.equal(shown.length, 3, 'at once when the last update is long enough ago');
    timers.advance(1000);
    notices.finish();
    assert.deepEqual(shown.at(-1), { notice: { summary: 'work is starting', body: 'in step with the NAS after 16s, 100.0 MiB moved' }, final: true });
  });

  it('says that a start was refused, and why', () => {
    const { notices, shown, timers } = start();
    timers.advance(START_NOTICE_DELAY_MS);
    notices.finish(new Error('work changed on both hosts'));
    assert.equal(shown.at(-1)?.notice.summary, 'work did not start');
    assert.match(shown.at(-1)?.notice.body ?? '', /^work changed on both hosts \(after 3s\)$/u);
    assert.equal(shown.at(-1)?.notice.urgency, 'critical');
  });
});

describe('what a stop tells', () => {
  it('says that another machine may take the VM only when its work is on the NAS', () => {
    assert.equal(stopNotice('work', 'pushed', undefined)?.summary, 'work is on the NAS: safe to switch machines');
    assert.equal(stopNotice('work', 'nothing to push', undefined)?.summary, 'work is on the NAS: safe to switch machines');
    for (const kept of ['offline', 'conflict', 'lease-held-elsewhere'] as const) {
      const notice = stopNotice('work', 'kept here', kept);
      assert.equal(notice?.summary, 'work: work is only on this machine', kept);
      assert.equal(notice?.urgency, 'critical');
      assert.match(notice?.body ?? '', /kss (push|resolve) work/u);
    }
    assert.equal(stopNotice('work', 'kept here', 'no-push'), undefined);
    const failed = failedStopNotice('work', new Error('ssh failed with exit status 255'));
    assert.deepEqual([failed.summary, failed.urgency], ['work: work is only on this machine', 'critical']);
    assert.match(failed.body, /ssh failed with exit status 255\. .*kss push work/u);
  });
});
