import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IntegrityError } from '../../lib/errors.js';
import { MAX_FILES, bundleLength, decodeBundle, encodeBundle, type BundleFile } from '../../lib/state-bundle.js';

const file = (path: string, text: string, mode = 0o600): BundleFile => ({ path, mode, data: Buffer.from(text) });

/** A bundle whose index says what `index` says, with `data` after it. */
function forged(index: unknown, data = Buffer.alloc(0), dataLength = data.length): Buffer {
  const json = Buffer.from(JSON.stringify(index));
  const header = Buffer.alloc(20);
  header.write('KSSVOL1\n', 'latin1');
  header.writeBigUInt64BE(BigInt(dataLength), 8);
  header.writeUInt32BE(json.length, 16);
  return Buffer.concat([header, json, data]);
}

describe('state bundles', () => {
  it('round-trips files, sorted so that the same files make the same bytes', () => {
    const files = [file('tpm2/tpm2-00.permall', 'permall'), file('tpm2/tpm2-00.volatilestate', 'volatile', 0o640)];
    const bytes = encodeBundle(files);
    assert.deepEqual(encodeBundle([...files].reverse()), bytes);
    assert.equal(bundleLength(bytes), bytes.length);
    const padded = Buffer.concat([bytes, Buffer.alloc(4096)]); // as read from its volume
    assert.deepEqual(decodeBundle(padded)?.map((f) => [f.path, f.mode, f.data.toString()]), [
      ['tpm2/tpm2-00.permall', 0o600, 'permall'],
      ['tpm2/tpm2-00.volatilestate', 0o640, 'volatile'],
    ]);
  });

  it('reads a volume of zeros as no bundle, and an empty one as no files', () => {
    assert.equal(decodeBundle(Buffer.alloc(65536)), undefined);
    assert.deepEqual(decodeBundle(encodeBundle([])), []);
  });

  const hostile: Array<[string, Buffer, RegExp]> = [
    ['another magic', Buffer.from('NOTAVOL!\0\0\0\0\0\0\0\0\0\0\0\0'), /does not begin as kvm-snapshot-sync writes/],
    ['a path that climbs out', forged([{ path: '../../etc/shadow', mode: 0o600, size: 1 }], Buffer.from('x')), /not a plain file name/],
    ['an absolute path', forged([{ path: '/etc/shadow', mode: 0o600, size: 1 }], Buffer.from('x')), /not a plain file name/],
    ['a hidden name', forged([{ path: '.lock', mode: 0o600, size: 1 }], Buffer.from('x')), /not a plain file name/],
    ['a path two directories deep', forged([{ path: 'a/b/c', mode: 0o600, size: 1 }], Buffer.from('x')), /not a plain file name/],
    ['set-uid bits', forged([{ path: 'nvram', mode: 0o4755, size: 1 }], Buffer.from('x')), /not permission bits/],
    ['a name given twice', forged([{ path: 'a', mode: 0o600, size: 0 }, { path: 'a', mode: 0o600, size: 0 }]), /named twice/],
    ['a file that is also a directory', forged([{ path: 'a', mode: 0o600, size: 0 }, { path: 'a/b', mode: 0o600, size: 0 }]), /named twice/],
    ['sizes that do not add up', forged([{ path: 'a', mode: 0o600, size: 5 }], Buffer.from('xy')), /does not add up/],
    ['a length beyond the volume', forged([{ path: 'a', mode: 0o600, size: 1 }], Buffer.from('x'), 2 ** 40), /beyond the \d+ bytes of its volume/],
    ['too many files', forged(Array.from({ length: MAX_FILES + 1 }, (_, i) => ({ path: `f${i}`, mode: 0o600, size: 0 }))), /at most 64 files/],
    ['an index that is not a list', forged({ path: 'a' }), /not a list/],
    ['an entry without a size', forged([{ path: 'a', mode: 0o600 }]), /not \{path, mode, size\}/],
  ];
  for (const [name, bytes, message] of hostile) {
    it(`refuses ${name}`, () => {
      assert.throws(() => decodeBundle(bytes), (error: unknown) => error instanceof IntegrityError && message.test(error.message));
    });
  }

  it('refuses to bundle a file it could not give back', () => {
    assert.throws(() => encodeBundle([file('has space', 'x')]), /not a plain file name/);
  });
});
