// Integration tests use real tools. Under CI=true a missing tool fails the test;
// elsewhere the test is skipped with a message that says what to install.
import { execFileSync } from 'node:child_process';
import type { TestContext } from 'node:test';

const PACKAGE_OF: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  ip: 'iproute2',
  tc: 'iproute2',
  ssh: 'openssh-client',
  scp: 'openssh-client',
  'ssh-keygen': 'openssh-client',
  '/usr/sbin/sshd': 'openssh-server',
  'mkfs.btrfs': 'btrfs-progs',
  chattr: 'e2fsprogs',
  lsattr: 'e2fsprogs',
};

function has(tool: string): boolean {
  try {
    execFileSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Returns true when every tool is on PATH; otherwise fails (CI) or skips the test. */
export function requireTools(t: TestContext, ...tools: string[]): boolean {
  const missing = tools.filter((tool) => !has(tool));
  if (missing.length === 0) return true;
  const hint = `missing ${missing.join(', ')}: apt-get install ${[...new Set(missing.map((m) => PACKAGE_OF[m] ?? m))].join(' ')}`;
  if (process.env.CI === 'true') throw new Error(`${hint} (CI must run every test)`);
  t.skip(hint);
  return false;
}
