import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { DEFAULTS, configPath, parseNasLocation, peerUri, readConfig, validateConfig } from '../../lib/config.js';
import { ConfigError } from '../../lib/errors.js';

const FILE = '/etc/kvm-snapshot-sync/config.json';

describe('parseNasLocation', () => {
  const cases: Array<[string, unknown]> = [
    ['/mnt/nas/kss', { kind: 'dir', path: '/mnt/nas/kss' }],
    ['file:///srv/my%20nas', { kind: 'dir', path: '/srv/my nas' }],
    ['ssh://kss@nas.lan/volume1/kss', { kind: 'ssh', user: 'kss', host: 'nas.lan', port: 22, path: '/volume1/kss' }],
    ['ssh://nas:2222/srv/vm%20s', { kind: 'ssh', user: undefined, host: 'nas', port: 2222, path: '/srv/vm s' }],
    ['ssh://root@[fd00::1]:22/kss', { kind: 'ssh', user: 'root', host: 'fd00::1', port: 22, path: '/kss' }],
  ];
  for (const [text, expected] of cases) {
    it(`parses ${text}`, () => assert.deepEqual(parseNasLocation(text), expected));
  }
  const bad: Array<[string, RegExp]> = [
    ['relative/dir', /neither an absolute directory nor an ssh/],
    ['http://nas/kss', /only directories and ssh/],
    ['ssh://nas', /names no directory/],
    ['ssh://nas/', /names no directory/],
    ['ssh://u:secret@nas/kss', /password/],
    ['file://host/kss', /local directory/],
  ];
  for (const [text, message] of bad) {
    it(`rejects ${text}`, () => assert.throws(() => parseNasLocation(text), message));
  }
});

describe('validateConfig', () => {
  it('fills defaults', () => {
    assert.deepEqual(validateConfig({ nas: '/mnt/nas' }, FILE, 'desktop'), {
      file: FILE,
      host: 'desktop',
      nas: { kind: 'dir', path: '/mnt/nas' },
      sshIdentity: undefined,
      sshKnownHosts: undefined,
      stateDir: DEFAULTS.stateDir,
      logDir: DEFAULTS.logDir,
      swtpmDir: '/var/lib/libvirt/swtpm',
      maxChainDepth: DEFAULTS.maxChainDepth,
      nasChainDepth: 16,
      retentionDays: 7,
      retentionDailyDays: 30,
      retentionWeeklyDays: 182,
      retentionGenerations: DEFAULTS.retentionGenerations,
      retentionBranchDays: 90,
      stallSeconds: 30,
      cpuPerHost: false,
      notify: true,
      checkpointSeconds: 300,
      checkpointBytes: 2 ** 30,
      checkpointRateMBps: 0,
      peers: {},
    });
  });

  it('keeps peers, and derives the URI of a host it does not list from its name', () => {
    const config = validateConfig({ nas: '/n', peers: { laptop: 'qemu+ssh://root@laptop.lan/system', 'nas-box': 'qemu+unix:///system?socket=/tmp/s' } }, FILE, 'desk');
    assert.equal(peerUri(config, 'laptop'), 'qemu+ssh://root@laptop.lan/system');
    assert.equal(peerUri(config, 'nas-box'), 'qemu+unix:///system?socket=/tmp/s');
    assert.equal(peerUri(config, 'desk2'), 'qemu+ssh://desk2/system');
  });

  it('keeps every key it is given', () => {
    const config = validateConfig(
      {
        host: 'laptop',
        nas: 'ssh://kss@nas:2222/kss',
        sshIdentity: '/etc/kvm-snapshot-sync/id_ed25519',
        sshKnownHosts: '/etc/kvm-snapshot-sync/known_hosts',
        stateDir: '/srv/state',
        logDir: '/srv/log',
        swtpmDir: '/srv/swtpm',
        maxChainDepth: 4,
        nasChainDepth: 12,
        retentionDays: 3,
        retentionDailyDays: 14,
        retentionWeeklyDays: 60,
        retentionBranchDays: 30,
        stallSeconds: 10,
      },
      FILE,
      'ignored',
    );
    assert.deepEqual([config.nasChainDepth, config.retentionDays, config.retentionDailyDays, config.retentionWeeklyDays, config.retentionBranchDays], [12, 3, 14, 60, 30]);
    assert.equal(config.host, 'laptop');
    assert.equal(config.sshIdentity, '/etc/kvm-snapshot-sync/id_ed25519');
    assert.equal(config.maxChainDepth, 4);
    assert.equal(config.swtpmDir, '/srv/swtpm');
    assert.equal(config.stallSeconds, 10);
    assert.equal(config.nas.kind, 'ssh');
  });

  const bad: Array<[string, unknown, RegExp]> = [
    ['not an object', [], /must be a JSON object/],
    ['missing nas', {}, /"nas" in \/etc\/kvm-snapshot-sync\/config.json: is required/],
    ['unknown key', { nas: '/n', nsa: 1 }, /unknown key "nsa" in \/etc/],
    ['bad host', { nas: '/n', host: 'my host' }, /"host" in .*not a usable host name/],
    ['relative path', { nas: '/n', stateDir: 'state' }, /"stateDir" in .*absolute path/],
    ['empty string', { nas: '/n', logDir: '' }, /"logDir" in .*non-empty string/],
    ['depth zero', { nas: '/n', maxChainDepth: 0 }, /"maxChainDepth" in .*2 to 64/],
    ['depth one (a base and a layer are the least)', { nas: '/n', maxChainDepth: 1 }, /"maxChainDepth" in .*2 to 64/],
    ['depth fraction', { nas: '/n', maxChainDepth: 2.5 }, /"maxChainDepth"/],
    ['depth text', { nas: '/n', maxChainDepth: '8' }, /"maxChainDepth"/],
    ['bad nas', { nas: 'nas:/kss' }, /"nas" in .*only directories and ssh/],
    ['retention of no days', { nas: '/n', retentionDays: 0 }, /"retentionDays" in .*1 to 36500/],
    ['retention of no generations', { nas: '/n', retentionGenerations: -1 }, /"retentionGenerations"/],
    ['a stall deadline too short to tell a busy NAS from a dead one', { nas: '/n', stallSeconds: 2 }, /"stallSeconds" in .*5 to 3600/],
    ['a stall deadline in text', { nas: '/n', stallSeconds: '30' }, /"stallSeconds"/],
    ['notify as a word, not a boolean', { nas: '/n', notify: 'yes' }, /"notify" in .*true or false/],
    ['peers as a list', { nas: '/n', peers: ['qemu+ssh://laptop/system'] }, /"peers" in .*object of host names/],
    ['a peer that is no host name', { nas: '/n', peers: { 'my laptop': 'qemu+ssh://laptop/system' } }, /"peers" in .*"my laptop" is not a host name/],
    ['a peer URI of another hypervisor', { nas: '/n', peers: { laptop: 'xen+ssh://laptop/system' } }, /"peers" in .*not a libvirt QEMU URI/],
    ['a peer URI of a session daemon', { nas: '/n', peers: { laptop: 'qemu+ssh://laptop/session' } }, /"peers" in .*system daemon/],
    ['a peer URI that is no URI', { nas: '/n', peers: { laptop: 'laptop' } }, /"peers" in .*is not a URI/],
    ['a peer URI in a number', { nas: '/n', peers: { laptop: 22 } }, /"peers" in .*must be a string/],
  ];
  for (const [name, raw, message] of bad) {
    it(`rejects ${name}, naming the key and the file`, () => {
      assert.throws(() => validateConfig(raw, FILE, 'desktop'), (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.match(error.message, message);
        assert.match(error.remedy ?? '', /config\.json/);
        return true;
      });
    });
  }
});

describe('configPath', () => {
  it('prefers the flag, then KSS_CONFIG, then the default', () => {
    assert.equal(configPath('/a.json', { KSS_CONFIG: '/b.json' }), '/a.json');
    assert.equal(configPath(undefined, { KSS_CONFIG: '/b.json' }), '/b.json');
    assert.equal(configPath(undefined, {}), FILE);
  });
});

describe('readConfig', () => {
  const dir = mkdtempSync(join(tmpdir(), 'kss-config-'));
  it('reads and validates a file', async () => {
    const file = join(dir, 'ok.json');
    writeFileSync(file, JSON.stringify({ nas: '/mnt/nas', host: 'desk' }));
    assert.equal((await readConfig(file)).host, 'desk');
  });
  it('says when the file is missing, with the remedy', async () => {
    await assert.rejects(readConfig(join(dir, 'none.json')), (error: unknown) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /none\.json does not exist/);
      assert.match(error.remedy ?? '', /install\.sh/);
      return true;
    });
  });
  it('says where the JSON is broken', async () => {
    const file = join(dir, 'broken.json');
    writeFileSync(file, '{"nas": "/n",}');
    await assert.rejects(readConfig(file), /broken\.json is not valid JSON/);
  });
  it('cleans up', () => rmSync(dir, { recursive: true, force: true }));
});
