// What QEMU's own user needs to reach the disks, and the narrowest fix when it cannot.
// Pure: `kss doctor` (lib/commands/doctor.ts) gathers the facts.
//
// libvirt runs QEMU as the user and group of qemu.conf (Debian and Ubuntu: libvirt-qemu),
// with that user's supplementary groups, and its DAC driver chowns every file of a
// disk's chain to that user at start (dynamic_ownership, on by default). It never
// touches directories: each one above a disk and its layers directory must be
// traversable by that user. Layers are root's and not world-readable, so that chown is
// what lets QEMU read them. Nobody else needs anything: no fix widens access to others.
import type { GroupAccount, UserAccount } from './accounts.js';
import { groupIdsOf } from './accounts.js';
import type { Command } from './runner.js';
import { shellQuote } from './shell-quote.js';

/** libvirt's QEMU driver configuration. */
export const QEMU_CONF = '/etc/libvirt/qemu.conf';

/** What qemu.conf says about the identity QEMU runs with. */
export interface QemuSettings {
  /** `user = "…"`: a name, or `+UID`; undefined: the build's default. */
  user: string | undefined;
  /** `group = "…"`: a name, or `+GID`; undefined: the build's default. */
  group: string | undefined;
  /** `dynamic_ownership = 0` turns off the chown at start. */
  dynamicOwnership: boolean;
  /** `swtpm_user`, `swtpm_group`: who runs the emulated TPM and owns its state (default tss). */
  swtpmUser: string | undefined;
  swtpmGroup: string | undefined;
}

/** The users a libvirt build runs QEMU as when qemu.conf does not say: Debian's and Ubuntu's, then Fedora's. */
export const DEFAULT_QEMU_USERS = ['libvirt-qemu', 'qemu'];

/** Pure: the settings of a qemu.conf text (libvirt's conf syntax: `key = value`, `#` comments). */
export function parseQemuConf(text: string): QemuSettings {
  const values = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^\s*([a-z_]+)\s*=\s*("([^"]*)"|[^#\s]+)/u.exec(line);
    if (match?.[1] !== undefined) values.set(match[1], match[3] ?? match[2] ?? '');
  }
  return {
    user: values.get('user'),
    group: values.get('group'),
    dynamicOwnership: values.get('dynamic_ownership') !== '0',
    swtpmUser: values.get('swtpm_user'),
    swtpmGroup: values.get('swtpm_group'),
  };
}

/** The user libvirt runs swtpm as when qemu.conf does not say (and its group). */
export const DEFAULT_SWTPM_USER = 'tss';

/**
 * Pure: the owner libvirt gives an emulated TPM's state (swtpm runs as it and must open
 * its files); undefined when that account does not exist here.
 */
export function swtpmOwner(settings: QemuSettings, users: readonly UserAccount[], groups: readonly GroupAccount[]): { uid: number; gid: number } | undefined {
  const userName = settings.swtpmUser ?? DEFAULT_SWTPM_USER;
  const user = findAccount(userName, users, (u) => u.uid);
  const uid = user?.uid ?? numeric(userName);
  if (uid === undefined) return undefined;
  const groupName = settings.swtpmGroup ?? DEFAULT_SWTPM_USER;
  const gid = findAccount(groupName, groups, (g) => g.gid)?.gid ?? numeric(groupName) ?? user?.gid;
  return gid === undefined ? undefined : { uid, gid };
}

/** Who QEMU runs as: its uid, and every group id it holds. */
export interface QemuIdentity {
  name: string;
  uid: number;
  gids: number[];
}

/**
 * Pure: QEMU's identity from qemu.conf's settings and the account files; undefined
 * when its user does not exist here (libvirt is not installed).
 */
export function qemuIdentity(settings: QemuSettings, users: readonly UserAccount[], groups: readonly GroupAccount[]): QemuIdentity | undefined {
  const user = settings.user === undefined ? DEFAULT_QEMU_USERS.map((name) => users.find((u) => u.name === name)).find(Boolean) : findAccount(settings.user, users, (u) => u.uid);
  if (!user) {
    const uid = settings.user?.startsWith('+') ? Number(settings.user.slice(1)) : undefined;
    return uid !== undefined && Number.isInteger(uid) ? { name: `uid ${uid}`, uid, gids: [] } : undefined;
  }
  // The group of qemu.conf (default: the user's own group of that name, else its primary one), and the user's supplementary groups.
  const group = settings.group === undefined ? (groups.find((g) => g.name === user.name)?.gid ?? user.gid) : (findAccount(settings.group, groups, (g) => g.gid)?.gid ?? numeric(settings.group));
  return { name: user.name, uid: user.uid, gids: [...new Set([...(group === undefined ? [] : [group]), ...groupIdsOf(user, groups)])] };
}

/** `name`, `+ID` or a bare number (a name first, as libvirt reads it). */
function findAccount<T extends { name: string }>(value: string, accounts: readonly T[], idOf: (account: T) => number): T | undefined {
  if (value.startsWith('+')) return accounts.find((a) => idOf(a) === Number(value.slice(1)));
  return accounts.find((a) => a.name === value) ?? accounts.find((a) => String(idOf(a)) === value);
}

function numeric(value: string): number | undefined {
  const id = Number(value.replace(/^\+/u, ''));
  return Number.isInteger(id) ? id : undefined;
}

/**
 * Pure: the command that tells, as QEMU's user (real and effective ids, its groups),
 * the first of `dirs` (each an ancestor of the next) it cannot traverse: printed on
 * stdout, nothing when it can traverse them all. The kernel decides, ACLs included.
 */
export function traversalCheckCommand(identity: QemuIdentity, dirs: readonly string[]): Command {
  const groups = identity.gids.length > 0 ? [`--groups=${identity.gids.join(',')}`] : ['--clear-groups'];
  const [gid] = identity.gids;
  return {
    file: 'setpriv',
    args: [`--reuid=${identity.uid}`, `--regid=${gid ?? identity.uid}`, ...groups, '--', 'sh', '-c', `for d do [ -x "$d" ] || { printf '%s\\n' "$d"; exit 0; }; done`, 'sh', ...dirs],
  };
}

/** A directory's owner and group, as stat gives them. */
export interface DirectoryFacts {
  path: string;
  uid: number;
  gid: number;
}

/**
 * Pure: the narrowest change that lets QEMU's user traverse `dir`: the owner's or the
 * group's x when it is the owner or holds the group, else an ACL entry for that user
 * alone. Never x for others: that would open the directory to every local user too.
 */
export function traversalFix(dir: DirectoryFacts, identity: QemuIdentity): string {
  const path = shellQuote(dir.path);
  if (dir.uid === identity.uid) return `chmod u+x ${path}`;
  if (identity.gids.includes(dir.gid)) return `chmod g+x ${path}`;
  return `setfacl -m u:${identity.name.startsWith('uid ') ? identity.uid : identity.name}:x ${path} (package acl)`;
}

/** Pure: every directory from the root down to `dir` (absolute), the root first. */
export function ancestorsOf(dir: string): string[] {
  const parts = dir.split('/').filter(Boolean);
  return ['/', ...parts.map((_, i) => `/${parts.slice(0, i + 1).join('/')}`)];
}
