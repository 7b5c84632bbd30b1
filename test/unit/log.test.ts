import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { escapeFileName, unescapeFileName } from '../../lib/file-names.js';
import { Logger, domainLogPath, fileSink, formatLogLine, streamSink } from '../../lib/log.js';

const time = new Date('2026-11-21T10:00:00.000Z');

describe('log lines', () => {
  it('are one line with quoted fields where needed', () => {
    assert.equal(
      formatLogLine({ time, level: 'info', message: 'sealed', fields: { disk: 'vda', path: '/i/my disk.qcow2', n: 3, gone: undefined } }),
      '2026-11-21T10:00:00.000Z INFO  sealed disk=vda path="/i/my disk.qcow2" n=3',
    );
  });
});

describe('domain log file names', () => {
  const cases: Array<[string, string]> = [
    ['work', 'work'],
    ['win-10_games.v2', 'win-10_games.v2'],
    ['my vm', 'my%20vm'],
    ['../etc/passwd', '%2E.%2Fetc%2Fpasswd'],
    ['é', '%C3%A9'],
  ];
  for (const [name, expected] of cases) {
    it(`${name} -> ${expected}, and back`, () => {
      assert.equal(escapeFileName(name), expected);
      assert.equal(unescapeFileName(expected), name);
    });
  }
  it('stay inside the log directory', () => assert.equal(domainLogPath('/var/log/kss', '../x'), '/var/log/kss/%2E.%2Fx.log'));
});

describe('sinks', () => {
  it('filter by level and add context', () => {
    const dir = mkdtempSync(join(tmpdir(), 'kss-log-'));
    const written: string[] = [];
    const file = join(dir, 'vm.log');
    const log = new Logger([fileSink(file, 'info'), streamSink({ write: (text: string) => written.push(text) }, 'warn')], {}, () => time).with({ domain: 'vm' });
    log.debug('noise');
    log.info('started');
    log.warn('slow NAS');
    assert.deepEqual(written, ['kss: warn: slow NAS\n']);
    assert.equal(
      readFileSync(file, 'utf8'),
      '2026-11-21T10:00:00.000Z INFO  started domain=vm\n2026-11-21T10:00:00.000Z WARN  slow NAS domain=vm\n',
    );
    rmSync(dir, { recursive: true, force: true });
  });
  it('a file sink that cannot write reports once and never throws', () => {
    const errors: unknown[] = [];
    const sink = fileSink('/nonexistent-dir/x.log', 'info', (error) => errors.push(error));
    const log = new Logger([sink]);
    log.info('a');
    log.info('b');
    assert.equal(errors.length, 1);
  });
});
