import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { parseGroups, parsePasswd } from '../../lib/accounts.js';
import { ancestorsOf, parseQemuConf, qemuIdentity, swtpmOwner, traversalCheckCommand, traversalFix, type QemuIdentity, type QemuSettings } from '../../lib/qemu-access.js';

const users = parsePasswd('root:x:0:0::/root:/bin/bash\nlibvirt-qemu:x:64055:107::/var/lib/libvirt:/usr/sbin/nologin\nqemu:x:107:107::/:/sbin/nologin\nalice:x:1000:1000::/home/alice:/bin/bash\n');
const groups = parseGroups('root:x:0:\nkvm:x:107:\nlibvirt-qemu:x:64055:libvirt-qemu\nalice:x:1000:\nvms:x:2000:libvirt-qemu,alice\n');
const qemu: QemuIdentity = { name: 'libvirt-qemu', uid: 64055, gids: [64055, 107, 2000] };

describe('parseQemuConf', () => {
  const rows: Array<[string, string, QemuSettings]> = [
    ["Debian's, all commented", '#user = "libvirt-qemu"\n#group = "libvirt-qemu"\n#dynamic_ownership = 1\ncgroup_controllers = [ ]\n', { user: undefined, group: undefined, dynamicOwnership: true, swtpmUser: undefined, swtpmGroup: undefined }],
    ['set', 'user = "qemu"   # ours\ngroup="kvm"\n', { user: 'qemu', group: 'kvm', dynamicOwnership: true, swtpmUser: undefined, swtpmGroup: undefined }],
    ['by id', 'user = "+0"\ngroup = "+0"\n', { user: '+0', group: '+0', dynamicOwnership: true, swtpmUser: undefined, swtpmGroup: undefined }],
    ['no chown at start', 'dynamic_ownership = 0\n', { user: undefined, group: undefined, dynamicOwnership: false, swtpmUser: undefined, swtpmGroup: undefined }],
    ["swtpm's own user", 'swtpm_user = "alice"\nswtpm_group = "vms"\n', { user: undefined, group: undefined, dynamicOwnership: true, swtpmUser: 'alice', swtpmGroup: 'vms' }],
  ];
  for (const [name, text, expected] of rows) it(name, () => assert.deepEqual(parseQemuConf(text), expected));
});

describe('qemuIdentity', () => {
  const conf = (user?: string, group?: string): QemuSettings => ({ user, group, dynamicOwnership: true, swtpmUser: undefined, swtpmGroup: undefined });
  const rows: Array<[string, QemuSettings, QemuIdentity | undefined]> = [
    ['the default: libvirt-qemu with its group of that name and its other groups', conf(), qemu],
    ['a named user and group', conf('alice', 'vms'), { name: 'alice', uid: 1000, gids: [2000, 1000] }],
    ['by uid and gid', conf('+64055', '+107'), { name: 'libvirt-qemu', uid: 64055, gids: [107, 64055, 2000] }],
    ['root', conf('+0', '+0'), { name: 'root', uid: 0, gids: [0] }],
    ['a uid without an account', conf('+4242', '+4242'), { name: 'uid 4242', uid: 4242, gids: [] }],
    ['no such user', conf('nobody-here'), undefined],
  ];
  for (const [name, settings, expected] of rows) it(name, () => assert.deepEqual(qemuIdentity(settings, users, groups), expected));
  it('falls back to qemu (Fedora) when there is no libvirt-qemu', () => {
    assert.deepEqual(qemuIdentity(conf(), users.filter((u) => u.name !== 'libvirt-qemu'), groups), { name: 'qemu', uid: 107, gids: [107] });
  });
});

describe('swtpmOwner', () => {
  const withTss = parsePasswd('root:x:0:0::/root:/bin/bash\ntss:x:103:106::/var/lib/tpm:/bin/false\nalice:x:1000:1000::/home/alice:/bin/bash\n');
  const tssGroups = parseGroups('root:x:0:\ntss:x:106:\nvms:x:2000:alice\n');
  const conf = (swtpmUser?: string, swtpmGroup?: string): QemuSettings => ({ user: undefined, group: undefined, dynamicOwnership: true, swtpmUser, swtpmGroup });
  it("is tss:tss by default, as Debian's libvirt runs swtpm", () => assert.deepEqual(swtpmOwner(conf(), withTss, tssGroups), { uid: 103, gid: 106 }));
  it('is what qemu.conf names, by name or by id', () => {
    assert.deepEqual(swtpmOwner(conf('alice', 'vms'), withTss, tssGroups), { uid: 1000, gid: 2000 });
    assert.deepEqual(swtpmOwner(conf('+4242', '+4243'), withTss, tssGroups), { uid: 4242, gid: 4243 });
  });
  it('is unknown without such an account', () => assert.equal(swtpmOwner(conf(), users, groups), undefined));
});

describe('traversalFix', () => {
  const rows: Array<[string, { uid: number; gid: number }, string]> = [
    ['a directory of its own', { uid: 64055, gid: 0 }, 'chmod u+x /srv/vms'],
    ['a directory of one of its groups', { uid: 0, gid: 2000 }, 'chmod g+x /srv/vms'],
    ["root's, group root", { uid: 0, gid: 0 }, 'setfacl -m u:libvirt-qemu:x /srv/vms (package acl)'],
    ["a person's home", { uid: 1000, gid: 1000 }, 'setfacl -m u:libvirt-qemu:x /srv/vms (package acl)'],
  ];
  for (const [name, owner, expected] of rows) {
    it(`${name} -> ${expected}`, () => {
      const fix = traversalFix({ path: '/srv/vms', ...owner }, qemu);
      assert.equal(fix, expected);
      assert.doesNotMatch(fix, /o\+x|a\+x|chmod [0-7]+/u, 'never opens the directory to everyone');
    });
  }
  it('quotes the path, and names a uid without an account by number', () => {
    assert.equal(traversalFix({ path: "/srv/my vm's", uid: 0, gid: 0 }, { name: 'uid 4242', uid: 4242, gids: [] }), "setfacl -m u:4242:x '/srv/my vm'\\''s' (package acl)");
  });
});

describe('ancestorsOf', () => {
  it('lists the root first', () => {
    assert.deepEqual(ancestorsOf('/var/lib/libvirt/images'), ['/', '/var', '/var/lib', '/var/lib/libvirt', '/var/lib/libvirt/images']);
    assert.deepEqual(ancestorsOf('/'), ['/']);
  });
});

describe('traversalCheckCommand', () => {
  it('runs as the user with its groups, and prints the first directory it cannot traverse', () => {
    const command = traversalCheckCommand(qemu, ['/', '/srv']);
    assert.deepEqual(command.args.slice(0, 5), ['--reuid=64055', '--regid=64055', '--groups=64055,107,2000', '--', 'sh']);
    assert.deepEqual(command.args.slice(-3), ['sh', '/', '/srv']);
    // Its script, run as this user: the first closed directory, or nothing.
    const script = command.args[command.args.indexOf('-c') + 1] as string;
    const run = (...dirs: string[]) => spawnSync('sh', ['-c', script, 'sh', ...dirs], { encoding: 'utf8' }).stdout;
    assert.equal(run('/', '/tmp'), '');
    assert.equal(run('/', '/nonexistent', '/tmp'), '/nonexistent\n');
  });
  it('clears the supplementary groups of a user without any', () => {
    assert.deepEqual(traversalCheckCommand({ name: 'uid 4242', uid: 4242, gids: [] }, ['/']).args.slice(0, 3), ['--reuid=4242', '--regid=4242', '--clear-groups']);
  });
});
