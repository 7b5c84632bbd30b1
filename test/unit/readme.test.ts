// The README's commands are the ones CI and people run: keep them and .ci/run in step.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

const readme = readFileSync('README.md', 'utf8');

/** The command in the fenced block right after a `<!-- name -->` marker. */
function markedCommand(name: string): string {
  const match = new RegExp(`<!-- ${name} -->\\s*\`\`\`sh\\n([^\\n]+)\\n\`\`\``, 'u').exec(readme);
  assert.ok(match, `README.md has a <!-- ${name} --> block`);
  return (match[1] as string).trim();
}

describe('README', () => {
  it('.ci/run runs the test line, nothing else, nothing less', () => {
    const run = readFileSync('.ci/run', 'utf8')
      .split('\n')
      .filter((line) => line.trim() !== '' && !line.startsWith('#') && !/^(set|cd) /u.test(line));
    assert.deepEqual(run, [markedCommand('test-line')]);
  });

  it('has a build line that makes the executable', () => {
    assert.match(markedCommand('build-line'), /npm run build/);
  });

  it('documents every exit code', async () => {
    const { ExitCode } = await import('../../lib/errors.js');
    for (const code of Object.values(ExitCode)) assert.match(readme, new RegExp(`^\\| ${code} \\|`, 'mu'), `exit code ${code}`);
  });

  it('documents every configuration key', async () => {
    const { CONFIG_KEYS } = await import('../../lib/config.js');
    assert.ok(CONFIG_KEYS.length >= 10, `the config module defines ${CONFIG_KEYS.join(', ')}`);
    for (const key of CONFIG_KEYS) {
      assert.match(readme, new RegExp(`^\\| \`${key}\` \\|`, 'mu'), `config key ${key}`);
    }
  });

  it('names the metadata namespace the code uses', async () => {
    const { NAMESPACE_URI } = await import('../../lib/namespace.js');
    assert.ok(readme.includes(NAMESPACE_URI));
  });

  it('documents every command of the CLI in its command table', () => {
    const cli = readFileSync('lib/cli.ts', 'utf8');
    const top = [...cli.matchAll(/^ {4}\.command\(\n? *'([a-z]+)/gmu)].map((m) => m[1] as string);
    const snapshot = [...cli.matchAll(/^ {8}\.command\(\n *'([a-z]+) </gmu)].map((m) => `snapshot ${m[1] as string}`);
    const names = [...top.filter((name) => name !== 'hook' && name !== 'snapshot'), ...snapshot];
    assert.ok(names.length >= 20, `found the commands: ${names.join(', ')}`);
    for (const name of names) assert.match(readme, new RegExp(`^\\| \`kss ${name}\\b`, 'mu'), `kss ${name}`);
  });
});
