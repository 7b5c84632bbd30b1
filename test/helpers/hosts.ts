// Simulated hosts for lifecycle tests: each has its own images, state, logs and config,
// and calls the built hook the way libvirt does (name `qemu`, domain XML on stdin).
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readConfig, type Config } from '../../lib/config.js';
import { Logger } from '../../lib/log.js';
import { NAMESPACE_URI } from '../../lib/namespace.js';
import { readLocalState, type LocalState } from '../../lib/sync/local-state.js';

export const BINARY = resolve('dist/kvm-snapshot-sync');
/** Stand-ins for the tools a hook-only test host lacks (virsh). */
const FAKE_BIN = resolve('test/fixtures/bin');

export interface HookRun {
  status: number | null;
  stdout: string;
  stderr: string;
}

export class TestHost {
  readonly images: string;
  readonly configFile: string;
  private readonly hook: string;
  private readonly kssPath: string;

  constructor(
    readonly name: string,
    readonly dir: string,
    nas: string,
    extraConfig: Record<string, unknown> = {},
  ) {
    this.images = join(dir, `images ${name}`);
    mkdirSync(this.images, { recursive: true });
    mkdirSync(join(dir, 'hooks'), { recursive: true });
    this.hook = join(dir, 'hooks', 'qemu');
    symlinkSync(BINARY, this.hook);
    this.kssPath = join(dir, 'kss');
    symlinkSync(BINARY, this.kssPath);
    this.configFile = join(dir, 'config.json');
    writeFileSync(
      this.configFile,
      JSON.stringify({ host: name, nas, stateDir: join(dir, 'state'), logDir: join(dir, 'log'), ...extraConfig }),
    );
  }

  /** A disk path on this host. */
  disk(file: string): string {
    return join(this.images, file);
  }

  config(): Promise<Config> {
    return readConfig(this.configFile);
  }

  /**
   * Runs the CLI (the executable under the name kss) with this host's config. No libvirtd
   * runs here: virsh is a stand-in (test/fixtures/bin/virsh) whose domstate is "shut off",
   * or `domstate` when given.
   */
  kss(...args: string[]): HookRun {
    return this.kssIn({}, ...args);
  }

  /** kss with more environment (KSS_TEST_DOMSTATE: what the virsh stand-in says). */
  kssIn(env: Record<string, string>, ...args: string[]): HookRun {
    const result = spawnSync(this.kssPath, args, {
      encoding: 'utf8',
      timeout: 120_000,
      env: { LC_ALL: 'C', PATH: `${FAKE_BIN}:/usr/bin:/bin`, HOME: '/root', KSS_CONFIG: this.configFile, ...env },
    });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  }

  /** Calls the hook as libvirt does; `xml` on stdin. */
  call(domain: string, op: string, subop: string, xml: string): HookRun {
    const result = spawnSync(this.hook, [domain, op, subop, '-'], {
      input: xml,
      encoding: 'utf8',
      timeout: 120_000,
      env: { LC_ALL: 'C', PATH: '/usr/bin:/bin', HOME: '/root', USER: 'root', KSS_CONFIG: this.configFile },
    });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  }

  state(domain: string): Promise<LocalState> {
    return this.config().then((config) => readLocalState(config.stateDir, domain));
  }

  log(domain: string): string {
    try {
      return readFileSync(join(this.dir, 'log', `${domain}.log`), 'utf8');
    } catch {
      return '';
    }
  }

  /** Waits until the background work after a stop has finished (its last log line: the NAS upkeep after the stop's own work). */
  async waitForStop(domain: string, timeoutMs = 120_000): Promise<void> {
    const count = (text: string, line: RegExp) => (text.match(line) ?? []).length;
    const [stops, upkeeps] = [/stop finished/gu, /NAS upkeep finished/gu];
    const before = this.log(domain);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = this.log(domain);
      if (count(text, stops) > count(before, stops) && count(text, upkeeps) > count(before, upkeeps)) return;
      if (/op=kss-finish-stop\/begin .*ERROR|ERROR .*op=kss-finish-stop/u.test(text.split('\n').slice(-5).join('\n'))) {
        throw new Error(`the background stop failed:\n${text.split('\n').slice(-10).join('\n')}`);
      }
      if (Date.now() > deadline) throw new Error(`the background stop did not finish:\n${text.split('\n').slice(-10).join('\n')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** A logger for library calls made on this host's behalf in a test. */
  quietLog(): Logger {
    return new Logger([]);
  }
}

/** The state a UEFI domain with an emulated TPM keeps beside its disks: its UUID and NVRAM file. */
export interface Firmware {
  uuid: string;
  nvram: string;
}

/** Domain XML with our metadata and one file disk per entry (device → path); with `firmware`, UEFI and an emulated TPM 2.0. */
export function managedDomainXml(name: string, disks: Record<string, string>, firmware?: Firmware): string {
  const devices = Object.entries(disks)
    .map(
      ([target, path]) =>
        `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${path.replaceAll("'", '&apos;')}'/><target dev='${target}' bus='virtio'/></disk>`,
    )
    .join('\n    ');
  const uuidAndOs = firmware ? `\n  <uuid>${firmware.uuid}</uuid>\n  <os><type>hvm</type><nvram>${firmware.nvram}</nvram></os>` : '';
  const tpm = firmware ? "\n    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>" : '';
  return `<domain type='kvm'>
  <name>${name}</name>${uuidAndOs}
  <metadata><kss:sync xmlns:kss="${NAMESPACE_URI}"/></metadata>
  <devices>
    ${devices}${tpm}
  </devices>
</domain>`;
}
