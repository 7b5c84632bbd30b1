// The person sitting at this machine: the active graphical login session, as logind
// tells it through loginctl, and that user's session bus, where desktop notifications
// go. The hook and the stop work run as root with no session of their own. Parsing
// and choosing are pure; finding runs loginctl and getent, each with a deadline, through
// commands never waited for (they cannot keep the hook from ending), and never throws.
import { lstat } from 'node:fs/promises';
import { runUnwaited, type Command, type UnwaitedResult } from '../runner.js';

export interface DesktopSession {
  /** logind's session id. */
  id: string;
  user: string;
  uid: number;
  gid: number;
  home: string;
  /** The user's session bus (a D-Bus address). */
  bus: string;
  runtimeDir: string;
}

/** The properties of a session that say whether a person sits at it. */
const PROPERTIES = ['Name', 'User', 'Type', 'Class', 'Active', 'Remote', 'State'];
const GRAPHICAL = new Set(['x11', 'wayland', 'mir']);
const DEADLINE_MS = 2000;

/** `loginctl list-sessions --no-legend`: the session ids, the first column. */
export function parseSessionIds(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim().split(/\s+/u)[0] ?? '')
    .filter((id) => /^[A-Za-z0-9_-]+$/u.test(id));
}

/** `loginctl show-session ID -p …`: its KEY=VALUE lines. */
export function parseProperties(text: string): Record<string, string> {
  const properties: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) properties[line.slice(0, at)] = line.slice(at + 1);
  }
  return properties;
}

/** A person at this machine's screen now: active, local, graphical, a user's. */
export function isActiveGraphical(properties: Record<string, string>): boolean {
  const { Active, Remote, Class, Type, State } = properties;
  return Active === 'yes' && Remote === 'no' && Class === 'user' && GRAPHICAL.has(Type ?? '') && (State === undefined || State === 'active');
}

/** `getent passwd UID`: the user's group and home, when the line is the user's. */
export function parsePasswd(line: string, uid: number): { gid: number; home: string } | undefined {
  const fields = line.trim().split(':');
  if (fields.length < 7 || fields[2] !== String(uid) || !/^\d+$/u.test(fields[3] ?? '')) return undefined;
  return { gid: Number(fields[3]), home: fields[5] as string };
}

/** A command's stdout, or undefined when it failed or took too long. */
function ask(command: Command, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  return new Promise((resolve) =>
    runUnwaited(command, { env, timeoutMs: DEADLINE_MS }, (result: UnwaitedResult) => resolve(result.exitCode === 0 && result.error === undefined ? result.stdout : undefined)),
  );
}

/**
 * The active graphical session whose user has a session bus, or undefined (no logind,
 * nobody logged in at the screen, a remote or text session only). `why` is told why
 * none was found, for the log.
 */
export async function findDesktopSession({ runtimeRoot = '/run/user', why = () => undefined }: { runtimeRoot?: string; why?: (reason: string) => void } = {}): Promise<DesktopSession | undefined> {
  const env = { PATH: '/usr/bin:/bin', LC_ALL: 'C', SYSTEMD_PAGER: '', SYSTEMD_COLORS: '0' };
  const list = await ask({ file: 'loginctl', args: ['list-sessions', '--no-legend', '--no-pager'] }, env);
  if (list === undefined) return void why('loginctl could not list the sessions (no logind here)');
  for (const id of parseSessionIds(list)) {
    const shown = await ask({ file: 'loginctl', args: ['show-session', id, '--no-pager', ...PROPERTIES.flatMap((p) => ['-p', p])] }, env);
    const properties = parseProperties(shown ?? '');
    if (!isActiveGraphical(properties) || !/^\d+$/u.test(properties.User ?? '')) continue;
    const uid = Number(properties.User);
    const account = parsePasswd((await ask({ file: 'getent', args: ['passwd', String(uid)] }, env)) ?? '', uid);
    if (account === undefined) continue;
    const runtimeDir = `${runtimeRoot}/${uid}`;
    const socket = await lstat(`${runtimeDir}/bus`).catch(() => undefined);
    if (!socket?.isSocket() || socket.uid !== uid) {
      why(`the session ${id} of ${properties.Name ?? uid} has no session bus at ${runtimeDir}/bus`);
      continue;
    }
    return { id, user: properties.Name ?? String(uid), uid, gid: account.gid, home: account.home, bus: `unix:path=${runtimeDir}/bus`, runtimeDir };
  }
  return void why('no active graphical session at this machine');
}
