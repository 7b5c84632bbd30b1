// `kss config set` (lib/commands/config.ts setConfig) on temporary files.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { setConfig } from '../../lib/commands/config.js';
import { ConfigError, UsageError } from '../../lib/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'kss-config-set-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function output() {
  let stderr = '';
  return { out: { stdout: { write: () => true }, stderr: { write: (text: string) => ((stderr += text), true) } }, said: () => stderr };
}

describe('kss config set', () => {
  it('creates the file with the keys given', async () => {
    const file = join(dir, 'new', 'config.json');
    const { out, said } = output();
    await setConfig({ file, settings: ['host=desk', 'nas=/srv/nas', 'maxChainDepth=6', 'stallSeconds=10'] }, out as never);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { host: 'desk', nas: '/srv/nas', maxChainDepth: 6, stallSeconds: 10 });
    assert.match(said(), /created .*\(host, nas, maxChainDepth, stallSeconds\)/u);
  });

  it('changes only the keys named, keeping the others as they are', async () => {
    const file = join(dir, 'keep.json');
    writeFileSync(file, JSON.stringify({ host: 'desk', nas: '/srv/nas', retentionDays: 60 }));
    const { out, said } = output();
    await setConfig({ file, settings: ['nas=ssh://kss@nas.lan/volume1/kss'] }, out as never);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { host: 'desk', nas: 'ssh://kss@nas.lan/volume1/kss', retentionDays: 60 });
    assert.match(said(), /updated .*\(nas\)/u);
  });

  it('writes true and false of a key that takes them as JSON booleans, and refuses other words', async () => {
    const file = join(dir, 'flags.json');
    writeFileSync(file, JSON.stringify({ host: 'desk', nas: '/srv/nas' }));
    await setConfig({ file, settings: ['notify=false', 'cpuPerHost=true'] }, output().out as never);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { host: 'desk', nas: '/srv/nas', notify: false, cpuPerHost: true });
    await assert.rejects(setConfig({ file, settings: ['notify=yes'] }, output().out as never), (error: unknown) => error instanceof ConfigError && /"notify".*true or false/u.test(error.message));
  });

  it('does not rewrite a file that would not change', async () => {
    const file = join(dir, 'same.json');
    writeFileSync(file, JSON.stringify({ host: 'desk', nas: '/srv/nas' }));
    const old = new Date('2020-01-01T00:00:00Z');
    utimesSync(file, old, old);
    const { out, said } = output();
    await setConfig({ file, settings: ['nas=/srv/nas'] }, out as never);
    assert.equal(statSync(file).mtimeMs, old.getTime());
    assert.match(said(), /unchanged/u);
  });

  it('sets and removes one host of peers (peers.HOST=URI), keeping the others; an unchanged entry is no change', async () => {
    const file = join(dir, 'peers.json');
    writeFileSync(file, JSON.stringify({ host: 'desk', nas: '/srv/nas', peers: { nas: 'qemu+ssh://nas/system' } }));
    const { out, said } = output();
    await setConfig({ file, settings: ['peers.laptop.lan=qemu+ssh://root@laptop.lan/system'] }, out as never);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')).peers, { nas: 'qemu+ssh://nas/system', 'laptop.lan': 'qemu+ssh://root@laptop.lan/system' });
    assert.match(said(), /updated .*\(peers\)/u);
    await setConfig({ file, settings: ['peers.laptop.lan=qemu+ssh://root@laptop.lan/system'] }, out as never);
    assert.match(said(), /unchanged/u);
    await setConfig({ file, settings: ['peers.nas='] }, out as never);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')).peers, { 'laptop.lan': 'qemu+ssh://root@laptop.lan/system' });
    await assert.rejects(setConfig({ file, settings: ['peers.laptop=ssh://laptop'] }, out as never), (error: unknown) => error instanceof ConfigError && /"peers"/u.test(error.message));
    await assert.rejects(setConfig({ file, settings: ['nas.x=/srv'] }, out as never), UsageError);
  });

  it('writes nothing when the result would be invalid, and names the key', async () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify({ host: 'desk', nas: '/srv/nas' }));
    const { out } = output();
    await assert.rejects(setConfig({ file, settings: ['nas=relative/path'] }, out as never), (error: unknown) => error instanceof ConfigError && /"nas"/u.test(error.message));
    await assert.rejects(setConfig({ file, settings: ['colour=blue'] }, out as never), ConfigError);
    await assert.rejects(setConfig({ file, settings: ['just-a-word'] }, out as never), UsageError);
    assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')), { host: 'desk', nas: '/srv/nas' });
  });
});
