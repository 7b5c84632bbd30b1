import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { paceDelayMs, pacedStream } from '../../../lib/nas/pace.js';

describe('the upload cap', () => {
  it('waits only while the stream is ahead of its cap', () => {
    assert.equal(paceDelayMs(1_000_000, 0, 1_000_000), 1000);
    assert.equal(paceDelayMs(1_000_000, 400, 1_000_000), 600);
    assert.equal(paceDelayMs(1_000_000, 1000, 1_000_000), 0);
    assert.equal(paceDelayMs(1_000_000, 5000, 1_000_000), 0, 'a stream behind its cap goes on at once');
  });

  it('passes every byte in order, in pieces, no faster than the cap', async () => {
    const data = randomBytes(3 * 2 ** 20 + 12345);
    const pieces: Buffer[] = [];
    const began = Date.now();
    await pipeline(
      Readable.from([data.subarray(0, 2 ** 20), data.subarray(2 ** 20)]),
      pacedStream(4_000_000),
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          pieces.push(chunk);
          callback();
        },
      }),
    );
    const seconds = (Date.now() - began) / 1000;
    assert.ok(Buffer.concat(pieces).equals(data), 'the bytes come out as they went in');
    assert.ok(pieces.every((piece) => piece.length <= 256 * 1024), 'sent in pieces of at most 256 KiB');
    // The last piece is sent when the cap allows it, without waiting after it: a lower bound of (size - piece) / cap.
    assert.ok(seconds >= (data.length - 256 * 1024) / 4_000_000 * 0.95, `took ${seconds.toFixed(2)} s`);
  });
});
