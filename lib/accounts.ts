// Users and groups of this machine, as /etc/passwd and /etc/group list them: pure
// parsers, and their readers. The accounts we ask about (libvirt, libvirt-qemu) are
// system accounts, always in these files; users known only through NSS (LDAP) are not seen.
import { readFile } from 'node:fs/promises';

export interface UserAccount {
  name: string;
  uid: number;
  /** The primary group. */
  gid: number;
}

export interface GroupAccount {
  name: string;
  gid: number;
  /** User names listed as members (the primary members are in /etc/passwd). */
  members: string[];
}

/** Pure: the entries of an /etc/passwd text; malformed lines are skipped. */
export function parsePasswd(text: string): UserAccount[] {
  return text.split('\n').flatMap((line) => {
    const [name, , uid, gid] = line.split(':');
    return name && isId(uid) && isId(gid) ? [{ name, uid: Number(uid), gid: Number(gid) }] : [];
  });
}

/** Pure: the entries of an /etc/group text; malformed lines are skipped. */
export function parseGroups(text: string): GroupAccount[] {
  return text.split('\n').flatMap((line) => {
    const [name, , gid, members = ''] = line.split(':');
    return name && isId(gid) ? [{ name, gid: Number(gid), members: members.split(',').map((m) => m.trim()).filter(Boolean) }] : [];
  });
}

/** Pure: every group id a user has when logged in: its primary group and those that list it. */
export function groupIdsOf(user: UserAccount, groups: readonly GroupAccount[]): number[] {
  return [...new Set([user.gid, ...groups.filter((group) => group.members.includes(user.name)).map((group) => group.gid)])];
}

function isId(text: string | undefined): text is string {
  return text !== undefined && /^\d+$/u.test(text);
}

/** The groups of /etc/group (or `file`); none when it cannot be read. */
export async function readGroups(file = '/etc/group'): Promise<GroupAccount[]> {
  return parseGroups(await readFile(file, 'utf8').catch(() => ''));
}

/** The users of /etc/passwd (or `file`); none when it cannot be read. */
export async function readPasswd(file = '/etc/passwd'): Promise<UserAccount[]> {
  return parsePasswd(await readFile(file, 'utf8').catch(() => ''));
}
