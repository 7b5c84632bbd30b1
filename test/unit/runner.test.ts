import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ToolError } from '../../lib/errors.js';
import { formatCommand, runCommand, runUnwaited, type UnwaitedResult } from '../../lib/runner.js';

describe('runCommand', () => {
  it('returns the output of a successful command, in the C locale', async () => {
    const result = await runCommand({ file: 'sh', args: ['-c', 'printf "%s|%s" "$1" "$LC_ALL"', 'sh', 'a b'] });
    assert.deepEqual(result, { stdout: 'a b|C', stderr: '', exitCode: 0 });
  });

  it('accepts the exit codes a command declares as success', async () => {
    const result = await runCommand({ file: 'sh', args: ['-c', 'exit 3'], okExitCodes: [0, 3] });
    assert.equal(result.exitCode, 3);
  });

  it('fails with the command, its status and the tail of its stderr', async () => {
    const script = 'for i in $(seq 1 15); do echo "line $i" >&2; done; exit 4';
    await assert.rejects(runCommand({ file: 'sh', args: ['-c', script] }), (error: unknown) => {
      assert.ok(error instanceof ToolError);
      assert.equal(error.status, 4);
      assert.match(error.message, /^sh failed with exit status 4: sh -c /);
      assert.equal(error.stderrTail.split('\n').length, 10);
      assert.match(error.stderrTail, /^line 6\n[\s\S]*line 15$/);
      return true;
    });
  });

  it('names the Debian package of a missing tool', async () => {
    const saved = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      await assert.rejects(runCommand({ file: 'qemu-img', args: ['--version'] }), (error: unknown) => {
        assert.ok(error instanceof ToolError);
        assert.match(error.message, /qemu-img is not installed/);
        assert.equal(error.remedy, 'apt-get install qemu-utils');
        return true;
      });
    } finally {
      process.env.PATH = saved;
    }
  });

  it('stops a command at its deadline', async () => {
    const started = Date.now();
    await assert.rejects(runCommand({ file: 'sleep', args: ['30'] }, { timeoutMs: 200 }), /did not finish within 200 ms/);
    assert.ok(Date.now() - started < 10_000, 'the deadline holds');
  });

  it('formats commands as a shell would read them', () => {
    assert.equal(formatCommand({ file: 'qemu-img', args: ['info', "/a b/it's"] }), `qemu-img info '/a b/it'\\''s'`);
  });
});

describe('runUnwaited', () => {
  /** Its result; a timer of the test's own keeps the loop alive, as the command does not. */
  const unwaited = (file: string, args: string[], timeoutMs = 5000) => {
    const alive = setInterval(() => undefined, 1000);
    return new Promise<UnwaitedResult>((resolve) => runUnwaited({ file, args }, { env: { PATH: '/usr/bin:/bin' }, timeoutMs }, resolve)).finally(() => clearInterval(alive));
  };

  it('tells what the command printed and how it ended', async () => {
    assert.deepEqual(await unwaited('sh', ['-c', 'echo 42; exit 3']), { stdout: '42\n', exitCode: 3 });
  });

  it('does not keep this process from ending while it runs', () => {
    const child = spawnSync(process.execPath, ['--import', 'tsx', '-e', "import('./lib/runner.ts').then((r) => r.runUnwaited({ file: 'sleep', args: ['5'] }, { env: { PATH: '/usr/bin:/bin' }, timeoutMs: 10000 }))"], { timeout: 4000 });
    assert.equal(child.status, 0, String(child.stderr));
  });

  it('tells, never throws, when the command cannot start or takes too long', async () => {
    assert.match((await unwaited('no-such-tool-kss', [])).error ?? '', /ENOENT/u);
    assert.match((await unwaited('echo', ['a\0b'])).error ?? '', /null bytes/u); // thrown by spawn itself
    assert.match((await unwaited('sleep', ['5'], 200)).error ?? '', /did not finish within 200 ms/u);
  });
});

describe('startPipeline', () => {
  it('runs a pipeline and reports each stage', async () => {
    const { startPipeline } = await import('../../lib/runner.js');
    const pipe = startPipeline([{ file: 'printf', args: ['a b'] }, { file: 'tr', args: ['a-z', 'A-Z'] }], { input: 'ignore', output: 'capture' });
    const results = await pipe.done;
    assert.deepEqual(results.map((r) => [r.exitCode, r.notFound]), [[0, false], [0, false]]);
    assert.equal(results[1]?.stdout, 'A B');
    const missing = await startPipeline([{ file: 'kss-no-such-tool', args: [] }], { input: 'ignore', output: 'capture' }).done;
    assert.equal(missing[0]?.notFound, true);
  });

  it('tells stderr lines as they come, leaving out those it is told to', async () => {
    const { startPipeline } = await import('../../lib/runner.js');
    const seen: Array<[number, string]> = [];
    const script = 'printf "note 1\\nkept\\nnote 2\\nlast, unended" >&2';
    const pipe = startPipeline([{ file: 'true', args: [] }, { file: 'sh', args: ['-c', script] }], {
      input: 'ignore',
      output: 'ignore',
      onStderrLine: (stage, line) => (seen.push([stage, line]), line.startsWith('note')),
    });
    const [, result] = await pipe.done;
    assert.deepEqual(seen, [[1, 'note 1'], [1, 'kept'], [1, 'note 2'], [1, 'last, unended']]);
    assert.equal(result?.stderrTail, 'kept\nlast, unended');
  });

  it('tells how far a process has read its stdin file', async () => {
    const { startPipeline, stdinOffsetOf } = await import('../../lib/runner.js');
    const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
    const dir = mkdtempSync('/tmp/kss-runner-');
    try {
      writeFileSync(`${dir}/input`, 'x'.repeat(10_000));
      // Reads 4000 bytes of it, then waits with the file open.
      const pipe = startPipeline([{ file: 'sh', args: ['-c', 'head -c 4000 >/dev/null; exec sleep 30'] }], {
        input: { file: `${dir}/input` },
        output: 'ignore',
      });
      await new Promise<void>((resolve) => {
        const poll = setInterval(() => stdinOffsetOf(pipe.pids[0]) === 4000 && (clearInterval(poll), resolve()), 20);
      });
      assert.equal(stdinOffsetOf(pipe.pids[0]), 4000);
      pipe.kill();
      await pipe.done;
      assert.equal(stdinOffsetOf(pipe.pids[0]), undefined, 'undefined once it has ended');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('takes its processes down when the parent is killed with SIGKILL', async () => {
    const { spawn } = await import('node:child_process');
    const parent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
      import { startPipeline } from './lib/runner.ts';
      const pipe = startPipeline([{ file: 'sleep', args: ['300'] }], { input: 'ignore', output: 'capture' });
      process.stdout.write(String(pipe.pids[0]) + '\\n');
      setInterval(() => {}, 1000);
    `], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = Number(await new Promise<string>((resolve) => parent.stdout.once('data', (d: Buffer) => resolve(d.toString()))));
    // Running, not a zombie waiting to be reaped (PID 1 here reaps only every few seconds).
    const alive = () => { try { return !/^\d+ \(.*\) Z/u.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; } };
    assert.ok(alive(), 'the pipeline runs');
    parent.kill('SIGKILL');
    for (let i = 0; i < 50 && alive(); i += 1) await new Promise((r) => setTimeout(r, 100));
    assert.equal(alive(), false, 'and dies with its parent');
  });
});
