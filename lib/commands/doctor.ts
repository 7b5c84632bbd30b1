// `kss doctor`: checks what this host needs, and says for each problem how to fix it.
// Each check is independent; the first failure decides the exit code (its error's).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { readConfig, type Config } from '../config.js';
import { ConfigError, KssError, describeError } from '../errors.js';
import { MARKER_MAX_BYTES, nasPaths } from '../nas/format.js';
import { openTransport } from '../nas/open.js';
import { NAMESPACE_URI } from '../namespace.js';
import { BTRFS_MAGIC, hasNoCow } from '../nocow.js';
import { runCommand } from '../runner.js';
import { readLocalState } from '../sync/local-state.js';
import { knownDomains } from '../sync/status.js';
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

async function checkNas(config: Config): Promise<Verdict> {
  const transport = openTransport(config);
  try {
    const marker = await transport.readFile(nasPaths.marker, MARKER_MAX_BYTES);
    return { level: 'ok', what: 'nas', detail: `${transport.where} answers${marker ? '' : ' (nothing published yet)'}` };
  } catch (error) {
    return { level: 'fail', what: 'nas', detail: describeError(error).split('\n')[0] ?? '', fix: (error as KssError).remedy, error: error as KssError };
  } finally {
    await transport.close();
  }
}

/** Our hook is installed (ours: it holds the namespace) and is the same version as this executable. */
function checkHook(): Verdict {
  const hook = HOOKS.find((path) => existsSync(path) && readFileSync(path).includes(NAMESPACE_URI));
  if (!hook) return { level: 'fail', what: 'hook', detail: `no kvm-snapshot-sync hook in ${HOOKS.join(' or ')}`, fix: 'run install.sh' };
  if (!readFileSync(hook).equals(readFileSync(process.execPath))) {
    return { level: 'warn', what: 'hook', detail: `${hook} is another version than this executable`, fix: 'run install.sh again' };
  }
  // Whether libvirtd has seen it cannot be asked: it looks at start and on SIGHUP, which install.sh sends.
  return { level: 'ok', what: 'hook', detail: hook };
}

/** Space, and for each managed disk's directory: traversable by the qemu user, NOCOW on btrfs. */
async function checkDirectories(config: Config): Promise<Verdict[]> {
  const verdicts: Verdict[] = [];
  const dirs = new Set<string>();
  for (const domain of await knownDomains(config)) {
    for (const top of Object.values((await readLocalState(config.stateDir, domain)).disks)) dirs.add(dirname(top));
  }
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
    const closed = ancestors(dir).find((path) => (statSync(path).mode & 0o001) === 0);
    if (closed) verdicts.push({ level: 'warn', what: 'images', detail: `${closed} is not traversable by others: QEMU (user libvirt-qemu) may not reach the disks below it`, fix: `chmod o+x ${closed}` });
    if (fs.type === BTRFS_MAGIC && !(await hasNoCow(dir).catch(() => false))) {
      verdicts.push({ level: 'warn', what: 'images', detail: `${dir} is on btrfs without NOCOW: disk images fragment badly under copy-on-write`, fix: `chattr +C ${dir} (applies to files created after it)` });
    }
  }
  return verdicts;
}

function ancestors(dir: string): string[] {
  const all: string[] = [];
  for (let path = dir; ; path = dirname(path)) {
    all.push(path);
    if (dirname(path) === path) return all.reverse();
  }
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
  if (config) verdicts.push(await checkNas(config));
  verdicts.push(checkHook());
  if (config) verdicts.push(...(await checkDirectories(config)));
  for (const v of verdicts) {
    context.stdout.write(`${v.level.toUpperCase().padEnd(4)}  ${v.what.padEnd(8)}  ${v.detail}${v.fix ? `\n      fix: ${v.fix}` : ''}\n`);
  }
  const failed = verdicts.find((v) => v.level === 'fail');
  if (failed) throw failed.error ?? new ConfigError(`kss doctor: ${failed.what}: ${failed.detail}`, { remedy: failed.fix });
}
