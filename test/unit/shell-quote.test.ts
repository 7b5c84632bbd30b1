import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { shellJoin, shellQuote } from '../../lib/shell-quote.js';

describe('shellQuote', () => {
  it('leaves plain words alone', () => assert.equal(shellQuote('/var/lib/x-1.qcow2'), '/var/lib/x-1.qcow2'));
  it('quotes the rest', () => assert.equal(shellQuote("it's"), `'it'\\''s'`));

  const words = ['plain', 'with space', "quote ' single", 'quote " double', '$(touch /tmp/kss-pwned)', '`id`', 'é ü 日本', '-leading-dash', '', 'new\nline', '*', '\\'];
  it('round-trips every word through a real POSIX shell', () => {
    const printed = execFileSync('sh', ['-c', `printf '%s\\0' ${shellJoin(words)}`], { encoding: 'utf8' });
    assert.deepEqual(printed.split('\0').slice(0, -1), words);
  });
});
