// A simulated host with a real libvirtd: a persistent mount and UTS namespace of its
// own, with per-host directories bind-mounted over /etc/libvirt, /var/lib/libvirt,
// /var/log/libvirt, /run, the tool's config/state/log directories and /root/.ssh, and
// its own virtlogd and libvirtd started inside it. The built executable is its hook,
// /etc/libvirt/hooks/qemu. Two of them run at once on this machine (see platform.md).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { NAMESPACE_URI } from '../../lib/namespace.js';
import { BINARY } from './hosts.js';
import type { SshNas } from './ssh-nas.js';

export const LIBVIRT_TOOLS = ['unshare', 'nsenter', 'libvirtd', 'virtlogd', 'virsh', 'qemu-system-x86_64', 'qemu-img'];

const LIBVIRTD_LOG = '/var/log/libvirt/libvirtd.log';
export const CLEAN_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * prctl(PR_SET_CHILD_SUBREAPER) (syscall 157 on x86_64, option 36), then runs the
 * command and reaps every process that ends below it until none is left. Perl is in
 * every Debian (perl-base is essential).
 */
const SUBREAPER = 'syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl: $!"; defined(my $pid = fork) or die "fork: $!"; if (!$pid) { exec @ARGV or die "exec: $!" } 1 while wait() != -1;';

/** Directories each host gets its own copy of: inside path → name under the host dir. */
const BINDS: Record<string, string> = {
  '/etc/libvirt': 'etc-libvirt',
  '/var/lib/libvirt': 'var-lib-libvirt',
  '/var/log/libvirt': 'var-log-libvirt',
  '/run': 'run',
  '/etc/kvm-snapshot-sync': 'etc-kss',
  '/var/lib/kvm-snapshot-sync': 'var-lib-kss',
  '/var/log/kvm-snapshot-sync': 'var-log-kss',
  '/root/.ssh': 'root-ssh',
};

/** What a host with its own system writes to as its own (overlays; see start). */
const OWN_SYSTEM = ['/usr', '/var'];

export class LibvirtHost {
  private readonly mntns: string;
  private readonly utsns: string;
  /** Stops waited for so far, per domain (see waitForStop). */
  private readonly stopsSeen = new Map<string, number>();

  private constructor(
    readonly name: string,
    readonly dir: string,
    /** Directories of its own: inside path → name under the host dir. */
    private readonly binds: Record<string, string>,
  ) {
    this.mntns = join(dir, 'ns', 'mnt');
    this.utsns = join(dir, 'ns', 'uts');
  }

  /**
   * Sets the host up and starts its daemons; `config` is written as the tool's config
   * and the built executable is its hook. A `bare` host has neither (install.sh's job),
   * and a /usr/local of its own. A host with `ownSystem` is bare and has its own /usr and
   * /var as well, overlays on this machine's (what dpkg and apt write stays in it): a
   * package can be installed, upgraded and purged there for real.
   */
  static async start(name: string, dir: string, config: Record<string, unknown>, options: { bare?: boolean; ownSystem?: boolean } = {}): Promise<LibvirtHost> {
    const bare = options.bare === true || options.ownSystem === true;
    const host = new LibvirtHost(name, dir, bare ? { ...BINDS, '/usr/local': 'usr-local' } : BINDS);
    mkdirSync(join(dir, 'ns'), { recursive: true });
    for (const sub of Object.values(host.binds)) mkdirSync(join(dir, sub), { recursive: true });
    cpSync('/etc/libvirt', join(dir, 'etc-libvirt'), { recursive: true });
    mkdirSync(join(dir, 'var-lib-libvirt', 'images'), { recursive: true, mode: 0o711 });
    // Both hosts share one cgroup tree: without this, two domains of one name collide.
    writeFileSync(join(dir, 'etc-libvirt', 'qemu.conf'), 'cgroup_controllers = [ ]\n', { flag: 'a' });
    // What a failed test shows of libvirtd: its warnings, its reloads and the hooks it called.
    writeFileSync(join(dir, 'etc-libvirt', 'libvirtd.conf'), `log_filters = "1:util.hook 2:daemon"\nlog_outputs = "1:file:${LIBVIRTD_LOG}"\n`, { flag: 'a' });
    mkdirSync(join(dir, 'etc-libvirt', 'hooks'), { recursive: true });
    if (!bare) {
      copyFileSync(BINARY, join(dir, 'etc-libvirt', 'hooks', 'qemu'));
      execFileSync('chmod', ['755', join(dir, 'etc-libvirt', 'hooks', 'qemu')]);
      writeFileSync(join(dir, 'etc-kss', 'config.json'), JSON.stringify({ host: name, ...config }, null, 2));
      symlinkSync('/etc/libvirt/hooks/qemu', join(dir, 'etc-kss', 'kss'));
    }

    // Namespace files must live on a private mount to be bind-mounted by unshare.
    execFileSync('mount', ['--bind', join(dir, 'ns'), join(dir, 'ns')]);
    execFileSync('mount', ['--make-private', join(dir, 'ns')]);
    writeFileSync(host.mntns, '');
    writeFileSync(host.utsns, '');
    const overlays = (options.ownSystem === true ? OWN_SYSTEM : []).map((inside) => {
      const layer = join(dir, 'system', inside.slice(1));
      mkdirSync(join(layer, 'upper'), { recursive: true });
      mkdirSync(join(layer, 'work'), { recursive: true });
      return `mount -t overlay overlay -o 'lowerdir=${inside},upperdir=${join(layer, 'upper')},workdir=${join(layer, 'work')}' ${inside}`;
    });
    const binds = Object.entries(host.binds).map(([inside, sub]) => `mkdir -p ${inside} && mount --bind '${join(dir, sub)}' ${inside}`);
    const setUp = [...overlays, ...binds, `hostname ${name}`].join(' && ');
    execFileSync('unshare', [`--mount=${host.mntns}`, `--uts=${host.utsns}`, '--propagation', 'private', 'sh', '-c', setUp]);
    mkdirSync(join(dir, 'run', 'libvirt'), { recursive: true });
    host.startDaemon('virtlogd');
    host.startDaemon('libvirtd');
    const deadline = Date.now() + 60_000;
    while (host.virsh('version').status !== 0) {
      if (Date.now() > deadline) throw new Error(`libvirtd on ${name} did not answer`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    return host;
  }

  /** A host whose config points at the SSH NAS, with the NAS's client key and known_hosts. */
  static async startWithSshNas(name: string, dir: string, nas: SshNas): Promise<LibvirtHost> {
    const host = await LibvirtHost.start(name, dir, {
      nas: `ssh://root@${nas.target.host}:${nas.target.port}${nas.root}`,
      sshIdentity: '/root/.ssh/id_nas',
      sshKnownHosts: '/root/.ssh/known_hosts',
    });
    copyFileSync(nas.target.identity as string, join(dir, 'root-ssh', 'id_nas'));
    copyFileSync(nas.target.knownHosts as string, join(dir, 'root-ssh', 'known_hosts'));
    return host;
  }

  /**
   * Starts libvirtd or virtlogd inside the host under a child subreaper of its own:
   * this machine's PID 1 reaps orphans only every ~2 s (platform.md), and libvirt waits
   * for a killed QEMU (an orphan, after libvirt's double fork) to be gone, so without it
   * every `virsh destroy` took ~2 s; a host with systemd reaps at once.
   */
  startDaemon(daemon: 'libvirtd' | 'virtlogd'): void {
    const reaper = spawn('nsenter', [`--mount=${this.mntns}`, `--uts=${this.utsns}`, '--wd=/', 'env', '-i', `PATH=${CLEAN_PATH}`, 'perl', '-e', SUBREAPER, daemon, '-d', '-p', `/run/${daemon}.pid`], {
      detached: true,
      stdio: 'ignore',
    });
    reaper.unref();
  }

  /** Defines (or redefines) a domain from XML, through a file the host's virsh can read. */
  define(name: string, xml: string): void {
    const inside = `/var/lib/libvirt/${name}.xml`;
    writeFileSync(this.outside(inside), xml);
    this.mustVirsh('define', inside);
  }

  /** Runs a command inside the host, from /, with a clean environment (the hook inherits it). */
  inside(command: string[], input?: string, env: Record<string, string> = {}) {
    return spawnSync('nsenter', [`--mount=${this.mntns}`, `--uts=${this.utsns}`, '--wd=/', 'env', '-i', `PATH=${CLEAN_PATH}`, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...command], {
      input,
      encoding: 'utf8',
      timeout: 180_000,
    });
  }

  virsh(...args: string[]) {
    return this.inside(['virsh', '-c', 'qemu:///system', ...args]);
  }

  /** virsh that must succeed. */
  mustVirsh(...args: string[]): string {
    const result = this.virsh(...args);
    if (result.status !== 0) throw new Error(`virsh ${args.join(' ')} on ${this.name}: ${result.stderr}`);
    return result.stdout;
  }

  /** kss (the hook's executable, under the name kss) inside the host. */
  kss(args: string[], env: Record<string, string> = {}) {
    return this.inside(['/etc/kvm-snapshot-sync/kss', ...args], undefined, env);
  }

  /** A long-running process inside the host (a daemon of a test), with a clean environment and `env`; it ends with the host. */
  spawnInside(command: string[], env: Record<string, string> = {}) {
    return spawn('nsenter', [`--mount=${this.mntns}`, `--uts=${this.utsns}`, '--wd=/', 'env', '-i', `PATH=${CLEAN_PATH}`, ...Object.entries(env).map(([k, v]) => `${k}=${v}`), ...command], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  }

  /** kss inside the host, not waited for: for two hosts doing something at the same moment. */
  kssAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
    const child = spawn('nsenter', [`--mount=${this.mntns}`, `--uts=${this.utsns}`, '--wd=/', 'env', '-i', `PATH=${CLEAN_PATH}`, '/etc/kvm-snapshot-sync/kss', ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const timer = setTimeout(() => child.kill('SIGKILL'), 180_000);
    return new Promise((resolve) =>
      child.on('close', (status) => {
        clearTimeout(timer);
        resolve({ status, stdout, stderr });
      }),
    );
  }

  /** A path inside the host as seen from outside (for qemu-img on its disks). */
  outside(insidePath: string): string {
    for (const [inside, sub] of Object.entries(this.binds)) {
      if (insidePath === inside || insidePath.startsWith(`${inside}/`)) return join(this.dir, sub, insidePath.slice(inside.length));
    }
    throw new Error(`${insidePath} is not in a per-host directory`);
  }

  /**
   * Reads or writes through the running domain's block layer, as the guest would:
   * qemu-io in the monitor, on the disk device's backend (`-d` takes a QOM path). The
   * monitor answers errors (no such device, permission conflicts); qemu-io writes its
   * own report, "Pattern verification failed" before "read N/N bytes", to QEMU's stdout,
   * which virtlogd copies into the domain's log a moment later. Either failure throws.
   */
  guestIo(domain: string, command: string, drive = 'virtio-disk0'): void {
    const qom = `/machine/peripheral/${drive}/virtio-backend`;
    const logFile = this.outside(`/var/log/libvirt/qemu/${domain}.log`);
    const before = existsSync(logFile) ? readFileSync(logFile).length : 0;
    const answer = this.mustVirsh('qemu-monitor-command', domain, '--hmp', `qemu-io -d ${qom} "${command}"`).trim();
    const fail = (detail: string) => new Error(`qemu-io "${command}" in ${domain} on ${this.name}: ${detail}`);
    if (answer !== '') throw fail(answer);
    const done = /^(read|wrote) \d+\/\d+ bytes at offset/mu;
    const readReport = () => readFileSync(logFile).subarray(before).toString('utf8');
    let report = readReport();
    for (const deadline = Date.now() + 10_000; !done.test(report) && Date.now() < deadline; report = readReport()) execFileSync('sleep', ['0.05']);
    if (!done.test(report) || /Pattern verification failed|error|failed/iu.test(report)) throw fail(report.trim() || 'no report in the log');
  }

  /** The hook's log for a domain. */
  hookLog(domain: string): string {
    return this.readLog(`/var/log/kvm-snapshot-sync/${domain}.log`);
  }

  /** libvirtd's own log (see start). */
  libvirtdLog(): string {
    return this.readLog(LIBVIRTD_LOG);
  }

  /** A log file inside the host, by inside path: '' while it does not exist. */
  private readLog(inside: string): string {
    const file = this.outside(inside);
    return existsSync(file) ? readFileSync(file, 'utf8') : '';
  }

  /**
   * One session: start the domain (`virsh start`, or the kss command line given), the
   * guest's reads and writes (guestIo on its first disk), `virsh destroy`, and the stop
   * work finished.
   */
  async session(domain: string, io: string[] = [], kssStart?: string[]): Promise<void> {
    const started = kssStart ? this.kss(kssStart) : this.virsh('start', domain);
    if (started.status !== 0) throw new Error(`start of ${domain} on ${this.name}: ${started.stderr}\n${this.hookLog(domain)}`);
    for (const command of io) this.guestIo(domain, command);
    this.mustVirsh('destroy', domain);
    await this.waitForStop(domain);
  }

  /**
   * Waits until the background work of this domain's next stop has finished. Every stop
   * counts, a start that failed or was refused too (libvirt runs the release hook after
   * it): call this once for each.
   */
  async waitForStop(domain: string, timeoutMs = 180_000): Promise<void> {
    const count = (this.stopsSeen.get(domain) ?? 0) + 1;
    this.stopsSeen.set(domain, count);
    const deadline = Date.now() + timeoutMs;
    while ((this.hookLog(domain).match(/stop finished/gu) ?? []).length < count) {
      if (Date.now() > deadline) throw new Error(`no finished stop ${count} of ${domain} on ${this.name}:\n${this.hookLog(domain).split('\n').slice(-8).join('\n')}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  stop(): void {
    // PIDs are shared between simulated hosts: stop this host's VMs through its own libvirtd.
    for (const domain of this.virsh('list', '--name').stdout.split('\n').filter(Boolean)) this.virsh('destroy', domain);
    for (const daemon of ['libvirtd', 'virtlogd']) {
      const pidFile = join(this.dir, 'run', `${daemon}.pid`);
      if (existsSync(pidFile)) spawnSync('kill', [readFileSync(pidFile, 'utf8').trim()]);
    }
    // Whatever still runs in the host (a background push, the reapers) would find its
    // directories gone: stop it first.
    const namespace = `mnt:[${statSync(this.mntns).ino}]`;
    for (const pid of readdirSync('/proc').filter((name) => /^\d+$/u.test(name))) {
      try {
        if (readlinkSync(`/proc/${pid}/ns/mnt`) === namespace) process.kill(Number(pid), 'SIGKILL');
      } catch {
        /* gone already */
      }
    }
    spawnSync('umount', ['-l', this.mntns]);
    spawnSync('umount', ['-l', this.utsns]);
    spawnSync('umount', ['-l', join(this.dir, 'ns')]);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

let kvm: boolean | undefined;
/**
 * Whether QEMU, run by libvirt as its own user, can open /dev/kvm: a machine without udev
 * may have the device only for root (crw------- seen here), and TCG runs the same hook calls.
 */
function kvmUsable(): boolean {
  kvm ??= existsSync('/dev/kvm') && spawnSync('runuser', ['-u', 'libvirt-qemu', '--', 'test', '-r', '/dev/kvm', '-a', '-w', '/dev/kvm']).status === 0;
  return kvm;
}

/** A tiny domain: 64 MiB, no OS (it sits in the BIOS), virtio disks (qcow2 unless named `raw`), nothing else. */
export function tinyDomainXml(name: string, disks: Record<string, string>, managed: boolean, raw: string[] = []): string {
  const type = kvmUsable() ? 'kvm' : 'qemu';
  const metadata = managed ? `<metadata><kss:sync xmlns:kss="${NAMESPACE_URI}"/></metadata>` : '';
  const devices = Object.entries(disks)
    .map(([target, path]) => `<disk type='file' device='disk'><driver name='qemu' type='${raw.includes(target) ? 'raw' : 'qcow2'}'/><source file='${path}'/><target dev='${target}' bus='virtio'/></disk>`)
    .join('');
  return `<domain type='${type}'><name>${name}</name>${metadata}<memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><on_poweroff>destroy</on_poweroff>
<devices>${devices}<memballoon model='none'/></devices></domain>`;
}

/**
 * A UEFI domain with an emulated TPM 2.0, as a Windows 11 VM has them: q35, OVMF from
 * Debian's ovmf (its variable store copied from the template at the first start), and
 * swtpm (its state encrypted with the libvirt secret `tpmSecret`, when given); 256 MiB,
 * virtio disks, no OS (OVMF reaches its boot manager and writes its variables).
 */
export function firmwareDomainXml(name: string, disks: Record<string, string>, managed: boolean, tpmSecret?: string): string {
  const type = kvmUsable() ? 'kvm' : 'qemu';
  const metadata = managed ? `<metadata><kss:sync xmlns:kss="${NAMESPACE_URI}"/></metadata>` : '';
  const devices = Object.entries(disks)
    .map(([target, path]) => `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${path}'/><target dev='${target}' bus='virtio'/></disk>`)
    .join('');
  return `<domain type='${type}'><name>${name}</name>${metadata}<memory unit='MiB'>256</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'/></os>
<features><acpi/></features><on_poweroff>destroy</on_poweroff>
<devices>${devices}<tpm model='tpm-crb'><backend type='emulator' version='2.0'>${tpmSecret ? `<encryption secret='${tpmSecret}'/>` : ''}</backend></tpm><memballoon model='none'/></devices></domain>`;
}
