import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { validateConfig } from '../../../lib/config.js';
import { DirTransport } from '../../../lib/nas/dir-transport.js';
import { openTransport } from '../../../lib/nas/open.js';
import { SshTransport } from '../../../lib/nas/ssh-transport.js';

describe('openTransport', () => {
  it('gives both kinds of NAS the configured stall deadline', () => {
    for (const [nas, kind] of [['/mnt/nas', DirTransport], ['ssh://kss@nas.lan/v/kss', SshTransport]] as const) {
      const transport = openTransport(validateConfig({ nas, stallSeconds: 7 }, '/c.json', 'desk'));
      assert.ok(transport instanceof kind);
      assert.equal((transport as unknown as { options: { stallTimeoutMs: number } }).options.stallTimeoutMs, 7000, nas);
    }
  });
});
