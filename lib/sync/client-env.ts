// `KSS_NO_SYNC=1 virsh start VM` and `KSS_STEAL_LEASE=1 virsh start VM`.
//
// libvirt passes the hook only its own environment, never the client's. The hook runs
// as root, so it can look for the client itself: a `virsh … start VM` process on this
// machine, in the hook's own mount namespace (another container or simulated host has
// its own), and read that process's environment, if lib/sync/client-trust.ts trusts
// it (the real virsh binary, run by root or a member of the group libvirt); otherwise
// the variables are ignored, and the log says why. Only the processes whose argv
// matches cost more than reading their cmdline.
//
// Limits: it works for a local `virsh start`. It cannot work for virt-manager (one
// long-lived process whose environment is that of its own start) or for a client on
// another machine (qemu+ssh://): use `kss start VM --no-sync` or `--steal-lease`,
// which set one-shot flags the hook reads whatever started the VM. A candidate's files
// are read one after the other (argv, environ, exe, status), its environment before the
// facts that judge it: to pass off its environment through a pid reused in between, an
// impostor would need a trusted virsh started on the very pid it just left, within
// microseconds, which is not in its hands (the other order would only need its own
// process to land on the pid a trusted virsh left).
import { readdir, readFile, readlink, stat } from 'node:fs/promises';
import { readGroups } from '../accounts.js';
import { findOnPath } from '../runner.js';
import { LIBVIRT_GROUP, chooseClient, flagsFromEnvironment, isVirshStart, judgeClient, parseProcStatus, type ClientEnvResult, type ClientVerdict } from './client-trust.js';

export type { ClientEnvResult } from './client-trust.js';

export interface ClientEnvOptions {
  /** Where procfs is (tests give a fake tree). */
  proc?: string;
  /** The real virsh (default: the first `virsh` on PATH). */
  virsh?: string;
  /** The group file that names LIBVIRT_GROUP. */
  groupFile?: string;
}

/** Finds the local `virsh start DOMAIN` client and reads its KSS_* variables, if it is to be trusted. */
export async function readClientEnvironment(domain: string, options: ClientEnvOptions = {}): Promise<ClientEnvResult> {
  const proc = options.proc ?? '/proc';
  const ownNamespace = await readlink(`${proc}/self/ns/mnt`).catch(() => undefined);
  const candidates: string[] = [];
  for (const pid of (await readdir(proc)).filter((name) => /^\d+$/u.test(name))) {
    try {
      const argv = (await readFile(`${proc}/${pid}/cmdline`, 'utf8')).split('\0').filter(Boolean);
      if (!isVirshStart(argv, domain)) continue;
      if ((await readlink(`${proc}/${pid}/ns/mnt`)) !== ownNamespace) continue;
      candidates.push(pid);
    } catch {
      // The process ended meanwhile, or is not ours to read.
    }
  }
  const verdicts: ClientVerdict[] = [];
  const environs = new Map<string, string>();
  if (candidates.length > 0) {
    const virsh = options.virsh !== undefined ? await stat(options.virsh).catch(() => undefined) : await identityOnPath('virsh');
    const libvirtGid = (await readGroups(options.groupFile)).find((group) => group.name === LIBVIRT_GROUP)?.gid;
    for (const pid of candidates) {
      try {
        // The environment first, then who runs it (see the top of this file).
        environs.set(pid, await readFile(`${proc}/${pid}/environ`, 'utf8'));
        const exe = await stat(`${proc}/${pid}/exe`);
        const credentials = parseProcStatus(await readFile(`${proc}/${pid}/status`, 'utf8'));
        if (!credentials) throw new Error('no credentials in its status');
        const exeIsVirsh = virsh !== undefined && exe.dev === virsh.dev && exe.ino === virsh.ino;
        verdicts.push(judgeClient({ pid, exeIsVirsh, credentials }, libvirtGid));
      } catch {
        // Ended meanwhile, or not ours to read: not a client we can vouch for.
        verdicts.push({ pid, trusted: false, note: `pid ${pid} could not be looked at` });
      }
    }
  }
  const chosen = chooseClient(verdicts);
  const flags = chosen.pid === undefined ? { skipSync: false, stealLease: false } : flagsFromEnvironment(environs.get(chosen.pid) ?? '');
  return { ...flags, note: chosen.note, ...(chosen.ignored ? { ignored: true } : {}) };
}

/** Device and inode of the first `name` on $PATH that is an executable file (the one a shell would run). */
async function identityOnPath(name: string): Promise<{ dev: number; ino: number } | undefined> {
  const file = await findOnPath(name, process.env.PATH);
  const found = file === undefined ? undefined : await stat(file).catch(() => undefined);
  return found === undefined ? undefined : { dev: found.dev, ino: found.ino };
}
