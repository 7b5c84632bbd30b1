// Desktop notifications for the person at this machine (lib/desktop/session.ts finds
// them): the freedesktop Notifications interface through notify-send (libnotify-bin),
// run as that user on their session bus, never waited for, so that it can neither delay
// nor fail the work that tells it. One notifier is one notification on the screen: each
// notice replaces the one before (notify-send --replace-id, with the id it printed).
import type { Logger } from '../log.js';
import { runUnwaited, type Command } from '../runner.js';
import { findDesktopSession, type DesktopSession } from './session.js';

export interface Notice {
  /** One line: what happens to which VM. */
  summary: string;
  /** Plain text (markup is escaped). */
  body: string;
  urgency?: 'low' | 'normal' | 'critical';
}

export interface Notifier {
  /**
   * Shows a notice in place of this notifier's last one. Updates that come while the
   * last is still being handed over are coalesced: the newest is shown next. A `final`
   * notice is handed over at once (its process may end before an update would be).
   */
  show(notice: Notice, options?: { final?: boolean }): void;
  /** Resolves once every notice shown so far has been handed to notify-send, or after `timeoutMs`. */
  settled(timeoutMs: number): Promise<void>;
}

/** How long one notify-send may take: a notification server that does not answer. */
const SEND_DEADLINE_MS = 10_000;

/** The body as the Notifications specification's markup reads it: &, < and > escaped. */
export function escapeMarkup(text: string): string {
  return text.replace(/&/gu, '&amp;').replace(/</gu, '&lt;').replace(/>/gu, '&gt;');
}

/**
 * notify-send as the session's user (setpriv: its uid and group, no other group, no
 * capability, no new privileges), printing the notification's id. `afterOneUnderWay`: a
 * final notice sent while an update is still being handed over starts a moment later,
 * so that the update cannot arrive after it and replace it (the process that sends it
 * may end before the update's notify-send does).
 */
export function notifySendCommand(session: DesktopSession, notice: Notice, replaceId: string | undefined, afterOneUnderWay = false): Command {
  return {
    file: 'setpriv',
    args: [
      `--reuid=${session.uid}`,
      `--regid=${session.gid}`,
      '--clear-groups',
      '--no-new-privs',
      '--',
      ...(afterOneUnderWay ? ['sh', '-c', 'sleep 0.5 && exec notify-send "$@"', 'notify-send'] : ['notify-send']),
      '--app-name=kvm-snapshot-sync',
      '--icon=computer',
      `--urgency=${notice.urgency ?? 'normal'}`,
      '--print-id',
      ...(replaceId === undefined ? [] : [`--replace-id=${replaceId}`]),
      '--',
      notice.summary,
      escapeMarkup(notice.body),
    ],
  };
}

/** The whole environment notify-send gets: the user's, with their session bus. */
export function sessionEnvironment(session: DesktopSession): NodeJS.ProcessEnv {
  return {
    PATH: '/usr/bin:/bin',
    HOME: session.home,
    USER: session.user,
    LOGNAME: session.user,
    XDG_RUNTIME_DIR: session.runtimeDir,
    DBUS_SESSION_BUS_ADDRESS: session.bus,
  };
}

export interface NotifierDeps {
  find?: typeof findDesktopSession;
  run?: typeof runUnwaited;
}

/** A notifier for the person at this machine; with none there, it shows nothing. */
export function desktopNotifier(log: Logger, { find = findDesktopSession, run = runUnwaited }: NotifierDeps = {}): Notifier {
  let looking: Promise<void> | undefined;
  let session: DesktopSession | null | undefined; // null: looked, nobody there
  let replaceId: string | undefined;
  let sending = false;
  let next: { notice: Notice; final: boolean } | undefined;
  let told = false;

  const send = (to: DesktopSession, notice: Notice, afterOneUnderWay: boolean) => {
    sending = true;
    run(notifySendCommand(to, notice, replaceId, afterOneUnderWay), { env: sessionEnvironment(to), timeoutMs: SEND_DEADLINE_MS }, (result) => {
      sending = false;
      const id = result.stdout.trim();
      if (/^\d+$/u.test(id)) replaceId = id;
      else if (!told) {
        told = true;
        const missing = result.exitCode === 127 || /ENOENT/u.test(result.error ?? '');
        log.info('could not show a desktop notification', {
          user: to.user,
          problem: result.error ?? `notify-send exited with ${result.exitCode}`,
          ...(missing ? { fix: 'apt-get install libnotify-bin' } : {}),
        });
      }
      deliver();
    });
  };
  // Never throws: a notice must not change what the work that tells it does.
  const deliver = () => {
    try {
      if (next === undefined || session === undefined) return;
      if (session === null) return void (next = undefined);
      if (sending && !next.final) return; // sent when the one under way is done
      const { notice } = next;
      next = undefined;
      send(session, notice, sending);
    } catch (error) {
      log.info('could not show a desktop notification', { problem: (error as Error).message });
    }
  };
  return {
    show(notice, { final = false } = {}) {
      next = { notice, final: final || next?.final === true };
      looking ??= find({ why: (reason) => log.info('no desktop notification', { why: reason }) }).then(
        (found) => void (session = found ?? null),
        () => void (session = null),
      );
      deliver();
      looking.then(deliver, () => undefined);
    },
    async settled(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([looking, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
      clearTimeout(timer);
      while (next !== undefined && session && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    },
  };
}
