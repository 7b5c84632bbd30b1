import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { buildSshCommand, classifySshFailure, sshConfigPath, type SshTarget } from '../../../lib/nas/ssh-command.js';

const target: SshTarget = {
  user: 'kss',
  host: 'nas.lan',
  port: 2222,
  identity: '/etc/kss/id key',
  knownHosts: '/etc/kss/known hosts',
  connectTimeoutSec: 10,
  aliveIntervalSec: 5,
  aliveCountMax: 3,
};

describe('buildSshCommand', () => {
  it('checks host keys, never prompts, and has deadlines', () => {
    const { file, args } = buildSshCommand(target, 'echo hi');
    assert.equal(file, 'ssh');
    const options = args.filter((_, i) => args[i - 1] === '-o');
    for (const expected of ['BatchMode=yes', 'StrictHostKeyChecking=yes', 'ConnectTimeout=10', 'ServerAliveInterval=5', 'ServerAliveCountMax=3', 'UserKnownHostsFile="/etc/kss/known hosts"', 'IdentitiesOnly=yes']) {
      assert.ok(options.includes(expected), expected);
    }
    assert.ok(!options.some((o) => /StrictHostKeyChecking=(no|accept-new)/u.test(o)));
    assert.equal(args[args.indexOf('-i') + 1], '/etc/kss/id key', 'the identity path is one argument, unquoted');
    assert.equal(args[args.indexOf('-l') + 1], 'kss');
    assert.deepEqual(args.slice(-4), ['2222', '--', 'nas.lan', "sh -c 'echo hi'"]);
  });

  it('leaves out what is not configured', () => {
    const { args } = buildSshCommand({ ...target, user: undefined, identity: undefined, knownHosts: undefined }, 'true');
    assert.ok(!args.includes('-l') && !args.includes('-i'));
    assert.ok(!args.some((a) => a.startsWith('UserKnownHostsFile')));
  });

  it('passes any script through the remote shell unchanged', () => {
    const script = `printf '%s' "it's \\$HOME" $(echo é) "a  b"`;
    const { args } = buildSshCommand(target, script);
    // The remote side runs the last argument through a shell, as sshd does.
    const remote = args.at(-1) as string;
    assert.equal(execFileSync('sh', ['-c', remote], { encoding: 'utf8' }), execFileSync('sh', ['-c', script], { encoding: 'utf8' }));
  });

  it('escapes ssh tokens in paths', () => {
    assert.equal(sshConfigPath('/a/100%/k'), '/a/100%%/k');
    assert.equal(sshConfigPath('/a b/k'), '"/a b/k"');
  });
});

describe('classifySshFailure', () => {
  const cases: Array<[number | null, string, string]> = [
    [255, 'Host key verification failed.', 'host-key'],
    [255, '@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @', 'host-key'],
    [255, 'root@10.0.0.2: Permission denied (publickey).', 'auth'],
    [255, 'ssh: connect to host nas port 22: Connection refused', 'unreachable'],
    [255, 'Timeout, server nas not responding.', 'unreachable'],
    [1, 'rm: cannot remove', 'remote'],
    [0, '', 'remote'],
  ];
  for (const [code, stderr, expected] of cases) {
    it(`${code} "${stderr}" -> ${expected}`, () => assert.equal(classifySshFailure(code, stderr), expected));
  }
});
