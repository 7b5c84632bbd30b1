// `kss doctor` (the built executable) against a real SSH NAS: it says that the NAS runs
// our commands under coreutils `timeout`, and, when the NAS has none (its account's
// PATH lacks it, as a minimal NAS would), says exactly that, with the fix. The image
// directories' checks run in install.test.ts, on a simulated host with a real libvirt.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { BINARY } from '../helpers/hosts.js';
import { SSH_NAS_TOOLS, startSshNas, type SshNas } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

let work: string;
let nas: SshNas | undefined;
let config: string;

before(async () => {
  if (SSH_NAS_TOOLS.some((tool) => spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool]).status !== 0)) return;
  work = mkdtempSync(join(tmpdir(), 'kss-doctor-'));
  nas = await startSshNas({ root: join(work, 'nas'), shape: false });
  config = configFor(nas, 'config.json');
});

/** A configuration file for `nas`, named `name`. */
function configFor(on: SshNas, name: string): string {
  const file = join(work, name);
  writeFileSync(
    file,
    JSON.stringify({
      host: 'doc',
      nas: `ssh://root@${on.target.host}:${on.target.port}${on.root}`,
      sshIdentity: on.target.identity,
      sshKnownHosts: on.target.knownHosts,
      stateDir: join(work, 'state'),
      logDir: join(work, 'log'),
    }),
  );
  return file;
}
after(() => {
  nas?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

function doctor(file = config) {
  return spawnSync(BINARY, ['--config', file, 'doctor'], { encoding: 'utf8', timeout: 120_000 });
}

describe('kss doctor and an SSH NAS', () => {
  it('checks that the NAS has coreutils timeout, and says how to fix it when it has not', (t: TestContext) => {
    if (!requireTools(t, ...SSH_NAS_TOOLS) || !nas) return;
    const healthy = doctor();
    assert.match(healthy.stdout, /^OK    nas       ssh root@.* answers/mu, healthy.stdout + healthy.stderr);
    assert.match(healthy.stdout, /^OK    timeout   the NAS runs our commands under coreutils timeout$/mu);
    assert.match(healthy.stdout, /^OK    sftp      the NAS serves SFTP: a start with the NAS in step runs no shell there$/mu);

    nas.setShellStartup('PATH=/nonexistent\n'); // the account's shell finds no timeout
    try {
      const without = doctor();
      assert.equal(without.status, 4, `a missing program: ${without.stdout}${without.stderr}`);
      assert.match(without.stdout, /^OK    nas       ssh root@.* lets us log in$/mu, without.stdout);
      assert.match(
        without.stdout,
        /^FAIL  timeout   the NAS has no `timeout` command: none of our commands can run there\n      fix: install GNU coreutils on the NAS, with `timeout` on the PATH of the NAS account's shell/mu,
      );
      assert.match(without.stderr, /kss: error: the NAS \(ssh root@.*\) has no `timeout` command/u);
    } finally {
      nas.setShellStartup(undefined);
    }
  });
});

describe('kss doctor and an SSH NAS without SFTP', () => {
  it('says that every step there runs the login shell, and how to serve SFTP', async (t: TestContext) => {
    if (!requireTools(t, ...SSH_NAS_TOOLS) || !nas) return;
    const bare = await startSshNas({ root: join(work, 'bare nas'), shape: false, sftp: 'none' });
    try {
      const said = doctor(configFor(bare, 'bare.json'));
      assert.match(said.stdout, /^OK    timeout   the NAS runs our commands under coreutils timeout$/mu, said.stdout + said.stderr);
      assert.match(
        said.stdout,
        /^WARN  sftp      the NAS's sshd serves no SFTP: every step there runs the account's login shell \(slower starts and stops\)\n      fix: add `Subsystem sftp internal-sftp` to the NAS’s sshd_config/mu,
      );
    } finally {
      bare.stop();
    }
  });
});
