import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { groupIdsOf, parseGroups, parsePasswd } from '../../lib/accounts.js';

const PASSWD = 'root:x:0:0:root:/root:/bin/bash\nlibvirt-qemu:x:64055:107:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\nbroken line\n+nis::::\n\n';
const GROUP = 'root:x:0:\nkvm:x:107:\nlibvirt:x:106:alice,bob\nlibvirt-qemu:x:64055:libvirt-qemu\nbad:x:y:\n';

describe('parsePasswd', () => {
  it('reads name, uid and primary group; skips what is not an entry', () => {
    assert.deepEqual(parsePasswd(PASSWD), [
      { name: 'root', uid: 0, gid: 0 },
      { name: 'libvirt-qemu', uid: 64055, gid: 107 },
    ]);
  });
});

describe('parseGroups', () => {
  it('reads name, gid and members; skips what is not an entry', () => {
    assert.deepEqual(parseGroups(GROUP), [
      { name: 'root', gid: 0, members: [] },
      { name: 'kvm', gid: 107, members: [] },
      { name: 'libvirt', gid: 106, members: ['alice', 'bob'] },
      { name: 'libvirt-qemu', gid: 64055, members: ['libvirt-qemu'] },
    ]);
  });
});

describe('groupIdsOf', () => {
  it('is the primary group and every group that lists the user', () => {
    assert.deepEqual(groupIdsOf({ name: 'libvirt-qemu', uid: 64055, gid: 107 }, parseGroups(GROUP)), [107, 64055]);
    assert.deepEqual(groupIdsOf({ name: 'carol', uid: 1002, gid: 1002 }, parseGroups(GROUP)), [1002]);
  });
});
