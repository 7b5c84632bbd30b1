// `KSS_NO_SYNC=1 virsh start VM` and `KSS_STEAL_LEASE=1 virsh start VM`.
//
// libvirt passes the hook only its own environment, never the client's. The hook runs
// as root, so it can look for the client itself: a `virsh … start VM` process on this
// machine, in the hook's own mount namespace (another container or simulated host has
// its own), and read that process's environment. This is honoured only when exactly one
// such process exists; otherwise the variables are ignored (and the log says why).
//
// Limits: it works for a local `virsh start`. It cannot work for virt-manager (one
// long-lived process whose environment is that of its own start) or for a client on
// another machine (qemu+ssh://): use `kss start VM --no-sync` or `--steal-lease`,
// which set one-shot flags the hook reads whatever started the VM.
import { readdir, readFile, readlink } from 'node:fs/promises';

export interface ClientEnvResult {
  skipSync: boolean;
  stealLease: boolean;
  /** What was found, for the log. */
  note: string;
}

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

/** Finds the local `virsh start DOMAIN` client and reads its KSS_* variables. */
export async function readClientEnvironment(domain: string, proc = '/proc'): Promise<ClientEnvResult> {
  const ownNamespace = await readlink(`${proc}/self/ns/mnt`).catch(() => undefined);
  const clients: string[] = [];
  for (const pid of (await readdir(proc)).filter((name) => /^\d+$/u.test(name))) {
    try {
      const argv = (await readFile(`${proc}/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
      if (!isVirshStart(argv, domain)) continue;
      if ((await readlink(`${proc}/${pid}/ns/mnt`)) !== ownNamespace) continue;
      clients.push(pid);
    } catch {
      // The process ended meanwhile, or is not ours to read.
    }
  }
  if (clients.length !== 1) {
    return { skipSync: false, stealLease: false, note: clients.length === 0 ? 'no local virsh start client' : `${clients.length} virsh start clients: ignored` };
  }
  const environ = await readFile(`${proc}/${clients[0]}/environ`, 'utf8').catch(() => '');
  return { ...flagsFromEnvironment(environ), note: `virsh start client pid ${clients[0]}` };
}
