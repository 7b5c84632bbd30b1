// The SFTP client's framing and bounds, against a scripted server on a pair of streams
// (the real server, sshd's internal-sftp, is in test/integration/nas-transport.test.ts).
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { FX, SftpSession, SftpStatusError } from '../../../lib/nas/sftp-session.js';

function frame(type: number, body: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length + 1);
  head.writeUInt8(type, 4);
  return Buffer.concat([head, body]);
}
const u32 = (value: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(value);
  return b;
};
const str = (text: string) => Buffer.concat([u32(Buffer.byteLength(text)), Buffer.from(text)]);

/** A session whose server answers INIT with VERSION 3 and the given extensions; `replies` answers each later request by its id. */
async function session(replies: (id: number, type: number) => Buffer | undefined) {
  const toServer = new PassThrough();
  const fromServer = new PassThrough();
  let buffered = Buffer.alloc(0);
  toServer.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4 && buffered.length >= 4 + buffered.readUInt32BE(0)) {
      const packet = buffered.subarray(4, 4 + buffered.readUInt32BE(0));
      buffered = buffered.subarray(4 + packet.length);
      const type = packet.readUInt8(0);
      if (type === 1) fromServer.write(frame(2, Buffer.concat([u32(3), str('posix-rename@openssh.com'), str('1'), str('fsync@openssh.com'), str('1')])));
      else {
        const answer = replies(packet.readUInt32BE(1), type);
        if (answer) fromServer.write(answer);
      }
    }
  });
  return { sftp: await SftpSession.start(toServer, fromServer), fromServer };
}

describe('the SFTP client', () => {
  it('reads the extensions the server offers, and attributes by their flags', async () => {
    const { sftp } = await session((id) => {
      // ATTRS: size, uid/gid, permissions, times, one extended pair.
      const attrs = Buffer.concat([u32((0x1 | 0x2 | 0x4 | 0x8 | 0x80000000) >>> 0), Buffer.from([0, 0, 0, 0, 0, 0, 1, 0]), u32(0), u32(0), u32(0o100644), u32(1), u32(1_700_000_000), u32(1), str('x'), str('y')]);
      return frame(105, Buffer.concat([u32(id), attrs]));
    });
    assert.deepEqual([...sftp.extensions.keys()], ['posix-rename@openssh.com', 'fsync@openssh.com']);
    assert.deepEqual(await sftp.lstat('/a'), { size: 256, permissions: 0o100644, mtime: 1_700_000_000 });
  });

  it('tells a status by its code, and the end of a file as undefined', async () => {
    const { sftp } = await session((id, type) => frame(101, Buffer.concat([u32(id), u32(type === 5 ? FX.EOF : FX.NO_SUCH_FILE), str('No such file'), str('')])));
    await assert.rejects(sftp.lstat('/gone'), (error: unknown) => error instanceof SftpStatusError && error.code === FX.NO_SUCH_FILE);
    assert.equal(await sftp.read(Buffer.from('h'), 0, 10), undefined);
  });

  it('cuts off a server that sends a reply larger than any can be, or one nobody asked for', async () => {
    const big = await session(() => {
      const head = Buffer.alloc(4);
      head.writeUInt32BE(64 * 2 ** 20);
      return head;
    });
    await assert.rejects(big.sftp.lstat('/a'), /a reply of 67108864 bytes, more than any reply can be/u);
    await assert.rejects(big.sftp.lstat('/b'), /more than any reply can be/u, 'a broken session fails every later request at once');

    const stray = await session((id) => frame(101, Buffer.concat([u32(id + 7), u32(0), str(''), str('')])));
    await assert.rejects(stray.sftp.lstat('/a'), /a reply to request \d+, which nobody asked/u);
  });
});
