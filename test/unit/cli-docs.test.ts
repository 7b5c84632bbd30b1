// One command table, three readers: --help (yargs), the man page and shell completion.
// Each is checked against the table, and the generated scripts are run by the real
// man, bash and zsh.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { HANDLED_COMMANDS, runCli } from '../../lib/cli.js';
import { allCommands, commandId, shownCommands } from '../../lib/command-table.js';
import { bashCompletion, zshCompletion } from '../../lib/completion.js';
import { EXIT_CODE_MEANINGS, ExitCode } from '../../lib/errors.js';
import { manPage } from '../../lib/man-page.js';

const have = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

async function help(args: string[]): Promise<string> {
  let printed = '';
  const log = console.log;
  console.log = (...parts: unknown[]) => {
    printed += `${parts.join(' ')}\n`;
  };
  try {
    await runCli(args, { stdout: process.stdout, stderr: process.stderr, env: {}, runHook: async () => 0 });
  } finally {
    console.log = log;
  }
  return printed;
}

describe('the command table', () => {
  it('gives every command a handler, and every handler a command', () => {
    const runnable = allCommands()
      .filter((c) => c.group !== true)
      .map(commandId);
    assert.ok(runnable.length >= 25, runnable.join(', '));
    assert.deepEqual([...HANDLED_COMMANDS].sort(), [...runnable].sort());
  });

  it('is what --help lists, hidden commands left out', async () => {
    const text = await help(['--help']);
    for (const command of shownCommands().filter((c) => c.words.length === 1)) {
      assert.match(text, new RegExp(`^  kss ${command.words[0]}\\b`, 'mu'), command.words[0]);
    }
    assert.doesNotMatch(text, /kss domains/u);
    assert.match(await help(['snapshot', 'list', '--help']), /--remote\s+only the NAS/u);
  });

  it('asks for a subcommand by name when a group is given alone', async () => {
    await assert.rejects(help(['snapshot']), /^UsageError: name a snapshot command: list, create, delete or merge$/u);
  });

  it('has every exit code explained', () => {
    assert.deepEqual(Object.keys(EXIT_CODE_MEANINGS).map(Number).sort((a, b) => a - b), Object.values(ExitCode).sort((a, b) => a - b));
  });
});

describe('the man page', () => {
  const page = manPage('1.2.3');

  it('has each shown command with its options, each exit code, and the files', () => {
    for (const command of shownCommands().filter((c) => c.group !== true)) {
      const words = command.words.map((w) => `\\\\fB${w.replace(/-/gu, '\\\\\\\\-')}\\\\fR`).join(' ');
      assert.match(page, new RegExp(`^\\\\fBkss\\\\fR ${words}`, 'mu'), commandId(command));
      for (const option of Object.keys(command.options ?? {})) assert.ok(page.includes(`\\-\\-${option.replace(/-/gu, '\\-')}`), `${commandId(command)} --${option}`);
    }
    for (const code of Object.values(ExitCode)) assert.match(page, new RegExp(`^\\.TP\\n\\\\fB${code}\\\\fR$`, 'mu'), `exit code ${code}`);
    assert.match(page, /^\.SH FILES$/mu);
    assert.doesNotMatch(page, /domains\\fR\n/u, 'no hidden command');
    assert.match(page, /^\.TH KSS 1 "" "kvm-snapshot-sync 1\.2\.3"/u);
  });

  it('is read by man without a warning', { skip: !have('man') && 'man is not installed' }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-man-'));
    try {
      writeFileSync(join(dir, 'kss.1'), page);
      const run = spawnSync('man', ['--warnings', '-E', 'UTF-8', '-l', join(dir, 'kss.1')], { encoding: 'utf8', env: { ...process.env, MANPAGER: 'cat', MANWIDTH: '80' } });
      assert.equal(run.status, 0, run.stderr);
      assert.equal(run.stderr, '');
      assert.match(run.stdout, /^SYNOPSIS$/mu);
      assert.match(run.stdout, /kss hook qemu domain op subop \[extra\]/u);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('shell completion', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'kss-completion-'));
    writeFileSync(join(dir, 'kss.bash'), bashCompletion());
    writeFileSync(join(dir, '_kss'), zshCompletion());
    // The executable's part: `kss [--config F] domains` names the managed domains.
    writeFileSync(join(dir, 'kss'), `#!/bin/sh\n[ "$1" = --config ] && shift 2\n[ "$1" = domains ] && printf '%s\\n' work games '$(touch ${dir}/expanded)'\n`);
    chmodSync(join(dir, 'kss'), 0o755);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** What bash offers for `line` (the cursor at its end). */
  function bash(line: string): string[] {
    const script = `source ${dir}/kss.bash
COMP_LINE=${JSON.stringify(line)}; read -r -a COMP_WORDS <<<"$COMP_LINE"; [[ $COMP_LINE == *' ' ]] && COMP_WORDS+=('')
COMP_CWORD=$((\${#COMP_WORDS[@]} - 1))
_kss kss
printf '%s\\n' "\${COMPREPLY[@]}"`;
    const run = spawnSync('bash', ['--norc', '-c', script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: `${dir}:/usr/bin:/bin` } });
    assert.equal(run.stderr, '', line);
    return run.stdout.split('\n').filter(Boolean);
  }

  it('bash: commands, subcommands, flags, flag values, domains where a domain goes', () => {
    assert.deepEqual(bash('kss st'), ['status', 'start', 'stop']);
    assert.deepEqual(bash('kss snapshot '), ['list', 'create', 'delete', 'merge']);
    assert.deepEqual(bash('kss config '), ['set']);
    assert.deepEqual(bash('kss stop --'), ['--no-push', '--force', '--timeout', '--help']);
    assert.deepEqual(bash('kss resolve --keep '), ['local', 'remote']);
    assert.deepEqual(bash('kss stop --timeout '), [], 'a number is not a domain');
    assert.deepEqual(bash('kss stop --force '), ['work', 'games', `$(touch ${dir}/expanded)`], 'after a flag without a value, the domain');
    assert.deepEqual(bash('kss --config /x start g'), ['games']);
    assert.deepEqual(bash('kss snapshot delete w'), ['work']);
    assert.deepEqual(bash('kss snapshot delete work '), [], 'then a snapshot name, not a domain');
    assert.deepEqual(bash('kss enable '), [], 'a domain not managed yet is not offered');
    assert.deepEqual(bash('kss dom'), [], 'a hidden command is not offered');
    assert.deepEqual(bash('kss start $'), ['$(touch ' + dir + '/expanded)'], 'a name is offered as it is');
    assert.ok(!existsSync(join(dir, 'expanded')), 'and never run');
  });

  it('zsh: compiles, and completes a unique command, flag and value through compinit', { skip: !have('zsh') && 'zsh is not installed' }, () => {
    assert.equal(spawnSync('zsh', ['-n', join(dir, '_kss')]).status, 0);
    // A real interactive zsh in a pseudo-terminal: Tab, then a widget that writes the line.
    const out = join(dir, 'lines');
    const lines = ['kss snap', 'kss snapshot li', 'kss snapshot list g', 'kss resolve --keep r', 'kss clone --d', 'kss stop work --ti'];
    const script = `zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z 'PS1="> "; PATH=${dir}:$PATH; fpath=(${dir} $fpath); autoload -U compinit; compinit -u -D; dump() { print -r -- "$BUFFER" >> ${out}; BUFFER= }; zle -N dump; bindkey "^X" dump'
for line in ${lines.map((l) => `'${l}'`).join(' ')}; do
  zpty -w -n z "$line"$'\\t'; sleep 0.5; zpty -w -n z $'\\C-x'; sleep 0.2
done
for i in {1..50}; do [[ $(wc -l < ${out} 2>/dev/null) -ge ${lines.length} ]] && break; sleep 0.2; done
zpty -d z`;
    const run = spawnSync('zsh', ['-f', '-c', script], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stderr);
    const got = spawnSync('cat', [out], { encoding: 'utf8' }).stdout.split('\n').slice(0, lines.length);
    assert.deepEqual(got, ['kss snapshot ', 'kss snapshot list ', 'kss snapshot list games ', 'kss resolve --keep remote ', 'kss clone --dir ', 'kss stop work --timeout ']);
  });
});
