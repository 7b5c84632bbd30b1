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

  it('installs the package that npm run package makes, of the version in package.json', () => {
    assert.match(markedCommand('package-line'), /npm run package$/u);
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    const named = [...readme.matchAll(/kvm-snapshot-sync_([^_\s]+)_amd64\.deb/gu)].map((m) => m[1]);
    assert.ok(named.length >= 2, 'the Install section and the walkthrough name it');
    assert.deepEqual([...new Set(named)], [version]);
  });

  it('documents every exit code, as lib/errors.ts explains it (the man page says the same)', async () => {
    const { EXIT_CODE_MEANINGS } = await import('../../lib/errors.js');
    const rows = [...readme.matchAll(/^\| (\d+) \| (.+) \|$/gmu)].map((m) => [m[1] as string, m[2] as string]);
    assert.deepEqual(rows, Object.entries(EXIT_CODE_MEANINGS));
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

  it('documents every command of the CLI in its command table', async () => {
    const { shownCommands } = await import('../../lib/command-table.js');
    const names = shownCommands()
      .filter((command) => command.group !== true && command.words[0] !== 'hook')
      .map((command) => command.words.join(' '));
    assert.ok(names.length >= 20, `found the commands: ${names.join(', ')}`);
    for (const name of names) assert.match(readme, new RegExp(`^\\| \`kss ${name}\\b`, 'mu'), `kss ${name}`);
  });
});
