// A start that pulls from an SSH NAS whose commands stop in the middle of the stream,
// while the link stays up and sshd goes on answering (so ssh's keep-alives see nothing
// wrong): the hook, called as libvirt calls it, must refuse the start within the stall
// deadline, saying which NAS and which deadline, and start normally once the NAS answers.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { layersDirOf } from '../../lib/layers.js';
import { SshTransport } from '../../lib/nas/ssh-transport.js';
import { enableDisks } from '../../lib/sync/enable.js';
import { MiB, createImage, guestDigest, qemuIo } from '../helpers/disks.js';
import { TestHost, managedDomainXml, type HookRun } from '../helpers/hosts.js';
import { SSH_NAS_TOOLS, startSshNas, type SshNas } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const STALL_SECONDS = 5;
/** Generous: this machine is shared and noisy; what matters is that the start ends. */
const MARGIN_MS = 15_000;

let work: string;
let nas: SshNas | undefined;
before(async (t) => {
  work = mkdtempSync(join(tmpdir(), 'kss-stall-life-'));
  if (requireTools(t as unknown as TestContext, 'qemu-img', 'qemu-io', ...SSH_NAS_TOOLS)) nas = await startSshNas();
});
after(() => {
  nas?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** The hook called as libvirt does, without blocking this process; killed after `limitMs`. */
function callHook(host: TestHost, domain: string, op: string, subop: string, xml: string, limitMs: number): Promise<HookRun & { ms: number }> {
  const started = Date.now();
  const child = spawn(join(host.dir, 'hooks', 'qemu'), [domain, op, subop, '-'], {
    env: { LC_ALL: 'C', PATH: '/usr/bin:/bin', HOME: '/root', USER: 'root', KSS_CONFIG: host.configFile },
  });
  child.stdin.end(xml);
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const limit = setTimeout(() => child.kill('SIGKILL'), limitMs);
  return new Promise((resolve) =>
    child.on('close', (status) => {
      clearTimeout(limit);
      resolve({ status, stdout, stderr, ms: Date.now() - started });
    }),
  );
}

function ok(run: HookRun, what: string): void {
  assert.equal(run.status, 0, `${what}: ${run.stderr}`);
  assert.equal(run.stdout, '', `${what} wrote to stdout`);
}

/** Random guest data written into a disk through its chain, as a guest would. */
function writeRandom(disk: string, offset: number, size: number): void {
  const source = join(work, `random-${randomBytes(4).toString('hex')}`);
  writeFileSync(source, randomBytes(size));
  qemuIo(disk, `write -s ${source} ${offset} ${size}`);
  rmSync(source);
}

describe('a start pulling from a NAS that stops answering mid-stream', () => {
  it('is refused within the stall deadline, naming the NAS and the deadline, and goes through once the NAS answers', async (t) => {
    if (!nas && !requireTools(t, 'qemu-img', 'qemu-io', ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    const config = {
      nas: `ssh://root@${s.target.host}:${s.target.port}${s.root}`,
      sshIdentity: s.target.identity,
      sshKnownHosts: s.target.knownHosts,
      stallSeconds: STALL_SECONDS,
    };
    const desk = new TestHost('desk', join(work, 'desk'), config.nas, config);
    const laptop = new TestHost('laptop', join(work, 'laptop'), config.nas, config);
    const deskDisk = desk.disk('vm.qcow2');
    const laptopDisk = laptop.disk('vm.qcow2');
    const [deskXml, laptopXml] = [managedDomainXml('vm', { vda: deskDisk }), managedDomainXml('vm', { vda: laptopDisk })];

    // The desktop: a base of random data, then a session that writes tens of MiB more.
    createImage(deskDisk, 128 * MiB);
    writeRandom(deskDisk, 0, 48 * MiB);
    await enableDisks('vm', { vda: deskDisk }, { config: await desk.config(), log: desk.quietLog() });
    ok(await callHook(desk, 'vm', 'prepare', 'begin', deskXml, 120_000), 'desk start (first push)');
    writeRandom(deskDisk, 64 * MiB, 48 * MiB);
    const written = guestDigest(deskDisk);
    ok(await callHook(desk, 'vm', 'release', 'end', deskXml, 120_000), 'desk stop');
    await desk.waitForStop('vm');

    // The laptop's start pulls; once bytes arrive, every NAS-side command stops (not sshd).
    const layers = layersDirOf(laptopDisk);
    const arriving = () => (existsSync(layers) ? readdirSync(layers).filter((name) => name.endsWith('.part') && statSync(join(layers, name)).size > 0) : []);
    const stop = { at: 0, pids: [] as number[] };
    const watching = setInterval(() => {
      if (stop.at !== 0 || arriving().length === 0) return;
      stop.pids = s.commands();
      for (const pid of stop.pids) process.kill(pid, 'SIGSTOP');
      stop.at = Date.now();
    }, 5);
    const refused = await callHook(laptop, 'vm', 'prepare', 'begin', laptopXml, 45_000).finally(() => clearInterval(watching));
    const tookMs = Date.now() - stop.at;
    try {
      assert.ok(stop.at > 0 && stop.pids.length > 0, 'the NAS-side sender was stopped mid-stream');
      assert.equal(refused.status, 8, `the start is refused with exit 8 (${refused.status}): ${refused.stderr}`);
      assert.equal(refused.stdout, '');
      const where = `ssh root@${s.target.host}:${s.target.port} ${s.root}`;
      assert.ok(refused.stderr.includes(`the NAS (${where}) sent nothing for ${STALL_SECONDS} s (stallSeconds) while pulling layer`), refused.stderr);
      assert.match(refused.stderr, /To fix: .*resumes/u);
      assert.ok(tookMs < STALL_SECONDS * 1000 + MARGIN_MS, `refused ${tookMs} ms after the NAS stopped sending`);
      t.diagnostic(`stderr: ${refused.stderr.trim().split("\n").join(" / ")}`);
      t.diagnostic(`the start was refused ${tookMs} ms after the NAS stopped sending (stallSeconds ${STALL_SECONDS}); the hook ran ${refused.ms} ms`);
      assert.ok(arriving().length > 0, 'the partial layer is kept for the next try');
      // The link and sshd were up all along: a new command is answered at once.
      const probe = new SshTransport({ target: s.target, root: s.root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000, compress: true });
      assert.ok(await probe.readFile('kss-nas.json', 4096), 'the NAS answers a new command');
      await probe.close();
    } finally {
      for (const pid of stop.pids) {
        try {
          process.kill(pid, 'SIGCONT');
        } catch {
          /* ended */
        }
      }
    }

    const again = await callHook(laptop, 'vm', 'prepare', 'begin', laptopXml, 120_000);
    ok(again, 'laptop start once the NAS answers');
    assert.equal(guestDigest(laptopDisk), written, 'the laptop reads exactly what the desktop wrote');
  });
});
