// Whom the hook believes about `KSS_NO_SYNC=1 virsh start VM` (lib/sync/client-env.ts
// reads /proc; this decides from what it read). Pure: imports nothing.
//
// Anyone can run a process that calls itself virsh and has `start VM` in its argv, so a
// match of the argv makes only a candidate. A candidate is trusted only when
//  - its executable (/proc/PID/exe) is the very file (device and inode) of the virsh on
//    the hook's PATH, not merely a file named virsh: an interpreter or a copy does
//    whatever its owner likes with its argv and environment; and
//  - it runs as root (real and effective uid 0), or holds the group `libvirt` (by
//    /etc/group: the group allowed to use libvirt's socket), i.e. it could have started
//    the VM itself.
// The flags are honoured only when exactly one trusted candidate exists. Untrusted
// candidates are left out of that count, so that someone else's process cannot hide a
// real client either.

export interface ClientEnvResult {
  skipSync: boolean;
  stealLease: boolean;
  /** What was found, for the log. */
  note: string;
  /** A candidate's environment was not used (not trusted, or more than one): worth a log line. */
  ignored?: boolean;
}

/** The group that may use libvirt's socket (Debian's and Ubuntu's unix_sock_group). */
export const LIBVIRT_GROUP = 'libvirt';

/** Pure: does this argv (NUL-split /proc cmdline) start `domain` with virsh? */
export function isVirshStart(argv: readonly string[], domain: string): boolean {
  if (!/(^|\/)virsh$/u.test(argv[0] ?? '')) return false;
  const start = argv.indexOf('start');
  return start > 0 && argv.slice(start + 1).some((word, i, rest) => word === domain || (word === '--domain' && rest[i + 1] === domain));
}

/** Pure: the flags a client environment asks for. */
export function flagsFromEnvironment(environ: string): { skipSync: boolean; stealLease: boolean } {
  const vars = new Map(environ.split('\0').filter(Boolean).map((entry) => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]));
  const yes = (name: string) => ['1', 'yes', 'true'].includes((vars.get(name) ?? '').toLowerCase());
  return { skipSync: yes('KSS_NO_SYNC'), stealLease: yes('KSS_STEAL_LEASE') };
}

/** Who a process is, from /proc/PID/status. */
export interface ProcessCredentials {
  /** Real and effective user ids. */
  uid: { real: number; effective: number };
  /** The effective group id and the supplementary groups: what opening a socket is judged by. */
  groups: number[];
}

/** Pure: the credentials in a /proc/PID/status text, or undefined when it lacks them. */
export function parseProcStatus(text: string): ProcessCredentials | undefined {
  const ids = (field: string): number[] | undefined => {
    const value = new RegExp(`^${field}:(.*)$`, 'mu').exec(text)?.[1]?.trim();
    return value !== undefined && /^(\d+(\s+\d+)*)?$/u.test(value) ? value.split(/\s+/u).filter(Boolean).map(Number) : undefined;
  };
  const [realUid, effectiveUid] = ids('Uid') ?? [];
  const [, effectiveGid] = ids('Gid') ?? [];
  const supplementary = ids('Groups');
  if (realUid === undefined || effectiveUid === undefined || effectiveGid === undefined || supplementary === undefined) return undefined;
  return { uid: { real: realUid, effective: effectiveUid }, groups: [effectiveGid, ...supplementary] };
}

/** What is known about one `virsh … start DOMAIN` candidate. */
export interface ClientFacts {
  pid: string;
  /** /proc/PID/exe is the same file (device and inode) as the virsh on the hook's PATH. */
  exeIsVirsh: boolean;
  credentials: ProcessCredentials;
}

/** Whether a candidate is trusted with its environment, and why (for the log). */
export interface ClientVerdict {
  pid: string;
  trusted: boolean;
  note: string;
}

/** Pure: is a candidate trusted with its environment? With the reason, for the log. */
export function judgeClient(facts: ClientFacts, libvirtGid: number | undefined): ClientVerdict {
  const { pid, credentials } = facts;
  if (!facts.exeIsVirsh) return { pid, trusted: false, note: `pid ${pid} is named virsh but does not run the virsh binary` };
  if (credentials.uid.real === 0 && credentials.uid.effective === 0) return { pid, trusted: true, note: `virsh start client pid ${pid} (root)` };
  if (libvirtGid !== undefined && credentials.groups.includes(libvirtGid)) {
    return { pid, trusted: true, note: `virsh start client pid ${pid} (uid ${credentials.uid.effective}, group ${LIBVIRT_GROUP})` };
  }
  return { pid, trusted: false, note: `pid ${pid} runs as uid ${credentials.uid.effective}, neither root nor in group ${LIBVIRT_GROUP}` };
}

/** Pure: the result for the judged candidates: the environment of the one trusted client, if there is exactly one. */
export function chooseClient(verdicts: readonly ClientVerdict[]): { pid: string | undefined; note: string; ignored: boolean } {
  const trusted = verdicts.filter((v) => v.trusted);
  const ignored = verdicts.filter((v) => !v.trusted).map((v) => v.note);
  const besides = ignored.length > 0 ? ` (ignored: ${ignored.join('; ')})` : '';
  const [only] = trusted;
  if (only && trusted.length === 1) return { pid: only.pid, note: `${only.note}${besides}`, ignored: ignored.length > 0 };
  if (trusted.length === 0) return { pid: undefined, note: verdicts.length === 0 ? 'no local virsh start client' : `no trusted virsh start client${besides}`, ignored: verdicts.length > 0 };
  return { pid: undefined, note: `${trusted.length} virsh start clients: ignored`, ignored: true };
}
