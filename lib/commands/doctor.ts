// `kss doctor`: checks what this host needs, and says for each problem how to fix it.
// Each check is independent; the first failure decides the exit code (its error's).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { readFile, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { readGroups, readPasswd } from '../accounts.js';
import { readConfig, type Config } from '../config.js';
import { ConfigError, KssError, ToolError, describeError } from '../errors.js';
import { layersDirOf } from '../layers.js';
import { MARKER_MAX_BYTES, nasPaths } from '../nas/format.js';
import { openTransport } from '../nas/open.js';
import { missingRemoteTimeout } from '../nas/ssh-command.js';
import { SshTransport } from '../nas/ssh-transport.js';
import { NAMESPACE_URI } from '../namespace.js';
import { BTRFS_MAGIC, hasNoCow } from '../nocow.js';
import { DEFAULT_QEMU_USERS, QEMU_CONF, ancestorsOf, parseQemuConf, qemuIdentity, traversalCheckCommand, traversalFix } from '../qemu-access.js';
import { runCommand } from '../runner.js';
import { readLocalState } from '../sync/local-state.js';
import { isStateVolume } from '../sync/state-volumes.js';
import { knownDomains } from '../sync/status.js';
import { libvirtUri, virshCommand } from '../virsh.js';
import { definedDomain } from './libvirt-domain.js';
import type { CommandContext } from './lifecycle.js';

type Verdict = { level: 'ok' | 'warn' | 'fail'; what: string; detail: string; fix?: string; error?: KssError };

const HOOKS = ['/etc/libvirt/hooks/qemu', '/etc/libvirt/hooks/qemu.d/kvm-snapshot-sync'];

/** The programs the tool runs, with how to get them. */
const TOOLS: Array<{ file: string; args: string[]; pkg: string }> = [
  { file: 'qemu-img', args: ['--version'], pkg: 'qemu-utils' },
  { file: 'ssh', args: ['-V'], pkg: 'openssh-client' },
  { file: 'zstd', args: ['--version'], pkg: 'zstd' },
  { file: 'openssl', args: ['version'], pkg: 'openssl' },
];

async function checkTools(): Promise<Verdict[]> {
  return Promise.all(
    TOOLS.map(async ({ file, args, pkg }) => {
      try {
        const { stdout, stderr } = await runCommand({ file, args });
        return { level: 'ok' as const, what: file, detail: `${stdout}${stderr}`.trim().split('\n')[0] ?? '' };
      } catch (error) {
        return { level: 'fail' as const, what: file, detail: describeError(error).split('\n')[0] ?? '', fix: `apt-get install ${pkg}`, error: error as KssError };
      }
    }),
  );
}

/**
 * The NAS answers; over SSH, that also shows it has coreutils `timeout`, which every
 * command there runs under (ssh-command.ts remoteCommand): a NAS without it is reached
 * but runs nothing, and says so here.
 */
async function checkNas(config: Config): Promise<Verdict[]> {
  const transport = openTransport(config);
  const overSsh = config.nas.kind === 'ssh';
  try {
    const marker = await transport.readFile(nasPaths.marker, MARKER_MAX_BYTES);
    const answers: Verdict = { level: 'ok', what: 'nas', detail: `${transport.where} answers${marker ? '' : ' (nothing published yet)'}` };
    if (!(transport instanceof SshTransport)) return [answers];
    const { sftp } = await transport.probe();
    return [
      answers,
      { level: 'ok', what: 'timeout', detail: 'the NAS runs our commands under coreutils timeout' },
      sftp
        ? { level: 'ok', what: 'sftp', detail: 'the NAS serves SFTP: a start with the NAS in step runs no shell there' }
        : {
            level: 'warn',
            what: 'sftp',
            detail: "the NAS's sshd serves no SFTP: every step there runs the account's login shell (slower starts and stops)",
            fix: 'add `Subsystem sftp internal-sftp` to the NAS’s sshd_config and reload sshd',
          },
    ];
  } catch (error) {
    if (overSsh && error instanceof ToolError && missingRemoteTimeout(error.status, error.stderrTail)) {
      const fix = 'install GNU coreutils on the NAS, with `timeout` on the PATH of the NAS account\'s shell (every command kss runs there is run under it)';
      return [
        { level: 'ok', what: 'nas', detail: `${transport.where} lets us log in` },
        {
          level: 'fail',
          what: 'timeout',
          detail: 'the NAS has no `timeout` command: none of our commands can run there',
          fix,
          error: new ToolError(`the NAS (${transport.where}) has no \`timeout\` command`, error.command, error.status, error.stderrTail, { remedy: fix }),
        },
      ];
    }
    return [{ level: 'fail', what: 'nas', detail: describeError(error).split('\n')[0] ?? '', fix: (error as KssError).remedy, error: error as KssError }];
  } finally {
    await transport.close();
  }
}

/**
 * Our hook is installed once (ours, as install.sh tells: an executable that holds the
 * namespace; libvirt would run a second copy too) and is the same version as this executable.
 */
function checkHook(): Verdict {
  const ours = HOOKS.filter((path) => {
    if (!existsSync(path)) return false;
    const bytes = readFileSync(path);
    return bytes.subarray(0, 4).toString('latin1') === '\x7fELF' && bytes.includes(NAMESPACE_URI);
  });
  const [hook] = ours;
  if (!hook) return { level: 'fail', what: 'hook', detail: `no kvm-snapshot-sync hook in ${HOOKS.join(' or ')}`, fix: 'run install.sh' };
  if (ours.length > 1) return { level: 'warn', what: 'hook', detail: `our hook is at ${ours.join(' and ')}: libvirt runs each operation twice`, fix: 'run install.sh again (it keeps one)' };
  if (!readFileSync(hook).equals(readFileSync(process.execPath))) {
    return { level: 'warn', what: 'hook', detail: `${hook} is another version than this executable`, fix: 'run install.sh again' };
  }
  // Whether libvirtd has seen it cannot be asked: it looks at start and on SIGHUP, which install.sh sends.
  return { level: 'ok', what: 'hook', detail: hook };
}

/** Space, and for each managed disk's directory: NOCOW on btrfs; and what QEMU's user needs to reach the disks. */
async function checkDirectories(config: Config): Promise<Verdict[]> {
  const verdicts: Verdict[] = [];
  const tops = new Set<string>();
  for (const domain of await knownDomains(config)) {
    // A state volume is never opened by QEMU: its directory is the state directory's.
    for (const [target, top] of Object.entries((await readLocalState(config.stateDir, domain)).disks)) if (!isStateVolume(target)) tops.add(top);
  }
  const dirs = new Set([...tops].map((top) => dirname(top)));
  for (const dir of [config.stateDir, ...(config.nas.kind === 'dir' ? [config.nas.path] : []), ...dirs]) {
    if (!existsSync(dir)) continue;
    const fs = await statfs(dir);
    const free = fs.bavail / fs.blocks;
    const freeGiB = (fs.bavail * fs.bsize) / 2 ** 30;
    verdicts.push(
      free < 0.1
        ? { level: 'warn', what: 'space', detail: `${dir}: ${freeGiB.toFixed(1)} GiB free (${(free * 100).toFixed(0)} %)`, fix: 'free space there; kss gc VM removes what retention allows from the NAS' }
        : { level: 'ok', what: 'space', detail: `${dir}: ${freeGiB.toFixed(1)} GiB free` },
    );
    if (!dirs.has(dir)) continue;
    if (fs.type === BTRFS_MAGIC && !(await hasNoCow(dir).catch(() => false))) {
      verdicts.push({ level: 'warn', what: 'images', detail: `${dir} is on btrfs without NOCOW: disk images fragment badly under copy-on-write`, fix: `chattr +C ${dir} (applies to files created after it)` });
    }
  }
  verdicts.push(...(await checkQemuAccess([...tops])));
  return verdicts;
}

/**
 * Whether QEMU's user (qemu.conf; lib/qemu-access.ts) can traverse every directory
 * above each disk and its layers, asked of the kernel as that user (ACLs count), and
 * the narrowest fix for the first one it cannot: a directory below it is only looked
 * at once that one is fixed.
 */
async function checkQemuAccess(tops: string[]): Promise<Verdict[]> {
  if (tops.length === 0) return [];
  const settings = parseQemuConf(await readFile(QEMU_CONF, 'utf8').catch(() => ''));
  const identity = qemuIdentity(settings, await readPasswd(), await readGroups());
  if (!identity) {
    const user = settings.user ?? DEFAULT_QEMU_USERS.join(' or ');
    return [{ level: 'warn', what: 'images', detail: `there is no user ${user} (QEMU's, by ${QEMU_CONF}): whether QEMU reaches the disks is not checked`, fix: 'apt-get install libvirt-daemon-system' }];
  }
  const verdicts: Verdict[] = [];
  if (!settings.dynamicOwnership) {
    verdicts.push({
      level: 'warn',
      what: 'images',
      detail: `${QEMU_CONF} sets dynamic_ownership = 0: libvirt does not give the disks' files to ${identity.name} at start, so QEMU opens only what that user may read already (layers are root's)`,
      fix: `remove dynamic_ownership = 0 from ${QEMU_CONF}, then restart libvirtd`,
    });
  }
  // A directory that does not exist (a disk gone) is not QEMU's problem to traverse.
  const dirs = new Set(tops.flatMap((top) => [dirname(top), layersDirOf(top)]).filter((dir) => existsSync(dir)));
  const told = new Set<string>();
  for (const dir of dirs) {
    let closed: string;
    try {
      closed = (await runCommand(traversalCheckCommand(identity, ancestorsOf(dir)))).stdout.trim();
    } catch (error) {
      verdicts.push({ level: 'warn', what: 'images', detail: `could not check ${dir} as ${identity.name}: ${describeError(error).split('\n')[0] ?? ''}` });
      continue;
    }
    const owner = closed === '' || told.has(closed) ? undefined : statSync(closed, { throwIfNoEntry: false });
    if (!owner) continue;
    told.add(closed);
    const { uid, gid } = owner;
    verdicts.push({
      level: 'warn',
      what: 'images',
      detail: `${closed} cannot be traversed by ${identity.name}, the user QEMU runs as: it cannot open the disks below it`,
      fix: traversalFix({ path: closed, uid, gid }, identity),
    });
  }
  return verdicts;
}

/**
 * An encrypted TPM state travels as it is: the libvirt secret it is encrypted with must
 * be defined, with the same value, on every host that runs the VM (libvirt cannot start
 * it otherwise). Only that it is defined can be told from here.
 */
async function checkTpmSecrets(config: Config, env: NodeJS.ProcessEnv): Promise<Verdict[]> {
  const verdicts: Verdict[] = [];
  for (const domain of await knownDomains(config)) {
    const record = await definedDomain(domain, env).catch(() => undefined);
    const secret = record?.tpmSecret;
    if (secret === undefined) continue;
    // Whether it is defined: its value cannot be read back (a private secret's), nor compared with the other host's.
    let exitCode: number;
    try {
      ({ exitCode } = await runCommand({ ...virshCommand(libvirtUri(env), 'secret-dumpxml', secret), okExitCodes: [0, 1] }));
    } catch (error) {
      verdicts.push({ level: 'warn', what: 'secrets', detail: `${domain}: could not ask libvirt for secret ${secret}: ${describeError(error).split('\n')[0] ?? ''}` });
      continue;
    }
    verdicts.push(
      exitCode === 0
        ? { level: 'ok', what: 'secrets', detail: `${domain}: its TPM state's secret ${secret} is defined here (it must hold the same value on the other host)` }
        : {
            level: 'fail',
            what: 'secrets',
            detail: `${domain}: its TPM state is encrypted with libvirt secret ${secret}, which is not defined on this host: the VM cannot start here`,
            fix: `on the other host: virsh secret-dumpxml ${secret} > secret.xml; here: virsh secret-define secret.xml, then virsh secret-set-value ${secret} --file FILE, FILE holding the same value (base64) as there`,
          },
    );
  }
  return verdicts;
}

/** `kss doctor` */
export async function doctorCommand(context: CommandContext): Promise<void> {
  const verdicts: Verdict[] = [];
  let config: Config | undefined;
  try {
    config = await readConfig(context.configFile);
    verdicts.push({ level: 'ok', what: 'config', detail: config.file });
  } catch (error) {
    verdicts.push({ level: 'fail', what: 'config', detail: describeError(error).split('\n')[0] ?? '', fix: (error as KssError).remedy, error: error as KssError });
  }
  verdicts.push(...(await checkTools()));
  if (config) verdicts.push(...(await checkNas(config)));
  verdicts.push(checkHook());
  if (config) verdicts.push(...(await checkDirectories(config)));
  if (config) verdicts.push(...(await checkTpmSecrets(config, context.env)));
  for (const v of verdicts) {
    context.stdout.write(`${v.level.toUpperCase().padEnd(4)}  ${v.what.padEnd(8)}  ${v.detail}${v.fix ? `\n      fix: ${v.fix}` : ''}\n`);
  }
  const failed = verdicts.find((v) => v.level === 'fail');
  if (failed) throw failed.error ?? new ConfigError(`kss doctor: ${failed.what}: ${failed.detail}`, { remedy: failed.fix });
}
