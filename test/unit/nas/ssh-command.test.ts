import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ALIVE_NOTE } from '../../../lib/nas/remote-scripts.js';
import {
  buildRemoteKillCommand,
  buildSshCommand,
  classifySshFailure,
  missingRemoteTimeout,
  sftpRefused,
  remoteCommand,
  remoteNote,
  sshConfigPath,
  sshFailureCause,
  type SshTarget,
} from '../../../lib/nas/ssh-command.js';

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
    const { file, args } = buildSshCommand(target, 'echo hi', { wallClockSec: 35 });
    assert.equal(file, 'ssh');
    const options = args.filter((_, i) => args[i - 1] === '-o');
    for (const expected of ['BatchMode=yes', 'StrictHostKeyChecking=yes', 'ConnectTimeout=10', 'ServerAliveInterval=5', 'ServerAliveCountMax=3', 'UserKnownHostsFile="/etc/kss/known hosts"', 'IdentitiesOnly=yes']) {
      assert.ok(options.includes(expected), expected);
    }
    assert.ok(!options.some((o) => /StrictHostKeyChecking=(no|accept-new)/u.test(o)));
    assert.equal(args[args.indexOf('-i') + 1], '/etc/kss/id key', 'the identity path is one argument, unquoted');
    assert.equal(args[args.indexOf('-l') + 1], 'kss');
    assert.deepEqual(args.slice(-4), ['2222', '--', 'nas.lan', remoteCommand('echo hi', 35)]);
    assert.equal(args.at(-1), `timeout -s KILL 35 sh -c 'echo kss-pgid $PPID >&2\necho hi'`);
  });

  it('shares one connection and logs ssh\'s own words, at INFO, to the sharing\'s log file', () => {
    const { args } = buildSshCommand(target, 'true', { multiplex: { controlPath: '/tmp/kss-ssh-x/master', logFile: '/tmp/kss-ssh-x/ssh.log', persistSec: 10 }, wallClockSec: 0 });
    const options = args.filter((_, i) => args[i - 1] === '-o');
    for (const expected of ['ControlMaster=auto', 'ControlPath=/tmp/kss-ssh-x/master', 'ControlPersist=10', 'LogLevel=INFO']) assert.ok(options.includes(expected), expected);
    assert.equal(args[args.indexOf('-E') + 1], '/tmp/kss-ssh-x/ssh.log');
  });

  it('leaves out what is not configured', () => {
    const { args } = buildSshCommand({ ...target, user: undefined, identity: undefined, knownHosts: undefined }, 'true', { wallClockSec: 0 });
    assert.ok(!args.includes('-l') && !args.includes('-i'));
    assert.ok(!args.some((a) => a.startsWith('UserKnownHostsFile')));
  });

  it('passes any script through the remote shell unchanged', () => {
    const script = `printf '%s' "it's \\$HOME" $(echo é) "a  b"`;
    const { args } = buildSshCommand(target, script, { wallClockSec: 0 });
    // The remote side runs the last argument through a shell, as sshd does.
    const remote = args.at(-1) as string;
    const run = (command: string) => execFileSync('sh', ['-c', command], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    assert.equal(run(remote), run(script));
  });

  it('escapes ssh tokens in paths', () => {
    assert.equal(sshConfigPath('/a/100%/k'), '/a/100%%/k');
    assert.equal(sshConfigPath('/a b/k'), '"/a b/k"');
  });
});

describe('the NAS-side wrapper', () => {
  /** Runs a remote command as a login shell would; resolves with its stderr and when it ended. */
  const runRemote = (command: string) => {
    const child = spawn('sh', ['-c', command], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const ended = new Promise<void>((resolve) => child.on('close', () => resolve()));
    return { child, stderr: () => stderr, ended };
  };
  const groupOf = (pid: number) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ')[2]);
  const groupAlive = (pgid: number) => {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it('tells first, on stderr, a process group of its own that holds every process of the script', async () => {
    const run = runRemote(remoteCommand('sleep 30 | cat', 0));
    for (let i = 0; i < 100 && !run.stderr().includes('\n'); i += 1) await new Promise((r) => setTimeout(r, 20));
    const note = remoteNote(run.stderr().split('\n')[0] as string);
    assert.ok(note && 'pgid' in note, run.stderr());
    assert.notEqual(note.pgid, groupOf(process.pid), 'not the caller\'s group');
    assert.equal(note.pgid, groupOf(note.pgid), 'the group is named after its leader, timeout');
    // Ending the group ends the script and both sides of its pipeline.
    process.kill(-note.pgid, 'SIGKILL');
    await run.ended;
    for (let i = 0; i < 50 && groupAlive(note.pgid); i += 1) await new Promise((r) => setTimeout(r, 100));
    assert.equal(groupAlive(note.pgid), false);
  });

  it('ends the whole group itself once its wall clock has run out', async () => {
    const started = Date.now();
    const run = runRemote(remoteCommand('sleep 30 | cat', 1));
    await run.ended;
    assert.ok(Date.now() - started < 10_000, `ended after ${Date.now() - started} ms`);
    const note = remoteNote(run.stderr().split('\n')[0] as string) as { pgid: number };
    for (let i = 0; i < 50 && groupAlive(note.pgid); i += 1) await new Promise((r) => setTimeout(r, 100));
    assert.equal(groupAlive(note.pgid), false, 'sleep and cat are gone too');
  });

  it('reads our notes and nothing else', () => {
    assert.deepEqual(remoteNote('kss-pgid 4242'), { pgid: 4242 });
    assert.deepEqual(remoteNote(ALIVE_NOTE), { alive: true });
    for (const line of ['kss-pgid 1', 'kss-pgid 0', 'kss-pgid -5', 'kss-pgid 12 ', 'kss-pgid 99999999999', 'rm: cannot remove', '']) {
      assert.equal(remoteNote(line), undefined, line);
    }
  });

  it('ends a NAS-side group over a new connection, never a group that is not one', () => {
    const { file, args } = buildRemoteKillCommand({ ...target, connectTimeoutSec: 10 }, 4242);
    assert.equal(file, 'ssh');
    const options = args.filter((_, i) => args[i - 1] === '-o');
    for (const expected of ['ControlMaster=no', 'ControlPath=none', 'ConnectTimeout=5', 'StrictHostKeyChecking=yes', 'BatchMode=yes']) assert.ok(options.includes(expected), expected);
    assert.deepEqual(args.slice(-2), ['nas.lan', `sh -c 'kill -s KILL -- -4242'`]);
    for (const bad of [0, 1, -3, 2.5, Number.NaN]) assert.throws(() => buildRemoteKillCommand(target, bad), /internal/);
  });
});

describe('sshFailureCause', () => {
  // What OpenSSH 9.2 wrote (its stderr and -E log together), measured on the test NAS.
  const cases: Array<[string, string]> = [
    ['Timeout, server 10.252.70.2 not responding.', 'the master, on a link cut mid-stream'],
    ['Timeout, server 10.252.70.2 not responding.\nmux_client_request_session: read from master failed: Broken pipe\nConnection timed out during banner exchange\nConnection to 10.252.70.2 port 2222 timed out', 'a client whose master died, then a new connection on a dead link'],
    ['ssh: connect to host 10.252.70.2 port 2223: Connection refused', 'nothing listening'],
    ['ssh: connect to host 10.252.98.1 port 2222: No route to host', 'no route'],
    ['Connection reset by 10.252.70.2 port 2222', 'sshd killed'],
    ['Connection to nas.lan closed by remote host.', 'sshd ended the connection'],
    ['No ED25519 host key is known for [10.252.70.2]:2222 and you have requested strict checking.\nHost key verification failed.', 'an unknown host key'],
    ['root@10.252.70.2: Permission denied (publickey,keyboard-interactive).', 'a refused key'],
  ];
  for (const [text, what] of cases) {
    it(`names the cause: ${what}`, () => assert.equal(sshFailureCause(text, 255), text.split('\n').at(-1)));
  }
  it('skips connection sharing\'s chatter', () => {
    assert.equal(sshFailureCause('Timeout, server nas not responding.\nControl socket connect(/tmp/x/master): Connection refused\n', 255), 'Timeout, server nas not responding.');
    assert.equal(sshFailureCause('some remote noise\nmux_client_request_session: read from master failed: Broken pipe', 255), 'some remote noise');
  });
  it('is never empty', () => {
    assert.equal(sshFailureCause('', 255), 'ssh gave no reason (exit status 255)');
    assert.equal(sshFailureCause('\n  \nmux_client_hello_exchange: write packet: Broken pipe\n', 255), 'ssh gave no reason (exit status 255)');
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

describe('sftpRefused', () => {
  const cases: Array<[number | null, string, boolean]> = [
    [255, 'subsystem request failed on channel 0\r', true], // ssh on its own connection
    [255, '', true], // over a shared connection: no word
    [255, 'mux_client_request_session: read from master failed: Broken pipe', false],
    [255, 'ssh: connect to host nas port 22: Connection refused', false],
    [255, 'Host key verification failed.', false],
    [255, 'root@nas: Permission denied (publickey).', false],
    [0, '', false],
    [1, 'subsystem request failed on channel 0', false],
  ];
  for (const [code, said, expected] of cases) {
    it(`${code} "${said.trim()}" -> ${expected}`, () => assert.equal(sftpRefused(code, said), expected));
  }
});

describe('missingRemoteTimeout', () => {
  const cases: Array<[number | null, string, boolean]> = [
    [127, 'bash: line 1: timeout: command not found', true],
    [127, 'sh: 1: timeout: not found', true],
    [127, 'sh: timeout: not found', true], // busybox ash
    [127, 'zsh:1: command not found: timeout', true],
    [127, 'sh: 1: zstd: not found', false], // a tool a script runs, not the wrapper
    [1, 'bash: line 1: timeout: command not found', false],
    [137, '', false], // timeout itself ended the command
    [null, '', false],
  ];
  for (const [code, stderr, expected] of cases) {
    it(`${code} "${stderr}" -> ${expected}`, () => assert.equal(missingRemoteTimeout(code, stderr), expected));
  }

  it("recognises this machine's own shells' words for remoteCommand without timeout", () => {
    for (const shell of ['/bin/bash', '/bin/dash']) {
      const run = spawnSync(shell, ['-c', remoteCommand('true', 5)], { env: { PATH: '/nonexistent' }, encoding: 'utf8' });
      assert.ok(missingRemoteTimeout(run.status, run.stderr), `${shell}: ${run.status} ${run.stderr}`);
    }
  });
});
