// Where a compaction of a local chain stops (lib/sync/disks.ts compactionOnto): pure.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compactionOnto } from '../../../lib/sync/disks.js';

/** The depth a chain has after the compaction compactionOnto chose. */
function depthAfter(length: number, published: number, maxDepth: number, preferred: number[] = []): number {
  const onto = compactionOnto(length, published, maxDepth, preferred);
  return onto === undefined ? length : published + 1 + (length - onto);
}

describe('compactionOnto', () => {
  const cases: Array<[string, number, number, number, number | undefined]> = [
    // name, chain length, index of the newest published layer, maxDepth, expected index
    ['within the limit: nothing', 8, 0, 8, undefined],
    ['one over, all published: down to half', 9, 0, 8, 6],
    ['far over: still down to half', 30, 0, 8, 27],
    ['two unpublished layers on top stay; the base is where it stops', 12, 2, 8, 11],
    ['unpublished layers make the depth: nothing to absorb', 9, 7, 8, undefined],
    ['the newest published layer not in the chain: nothing', 12, -1, 8, undefined],
    ['smallest limit: a layer on the base', 3, 0, 2, 2],
    ['an odd limit rounds the target up', 6, 0, 5, 4],
  ];
  for (const [name, length, published, maxDepth, expected] of cases) {
    it(name, () => assert.equal(compactionOnto(length, published, maxDepth), expected));
  }

  it("stops at another host's place when that keeps the chain within the limit, else as before", () => {
    assert.equal(compactionOnto(9, 0, 8, [3]), 3, 'the place, four layers deep: the chain is 7');
    assert.equal(compactionOnto(9, 0, 8, [3, 5]), 3, 'the nearest place');
    assert.equal(compactionOnto(9, 0, 8, [1]), 6, 'a place right under the published layer absorbs nothing: as before');
    assert.equal(compactionOnto(30, 0, 8, [5]), 27, 'a place too far from the base would leave the chain too deep: as before');
    assert.equal(compactionOnto(8, 0, 8, [3]), undefined, 'within the limit: nothing');
  });

  it('leaves every chain within the limit, or as shallow as its unpublished layers allow', () => {
    for (let maxDepth = 2; maxDepth <= 16; maxDepth += 1) {
      for (let length = 1; length <= 40; length += 1) {
        for (let published = 0; published < length - 1; published += 1) {
          const after = depthAfter(length, published, maxDepth);
          assert.ok(after <= Math.max(maxDepth, published + 2), `${length} layers, published at ${published}, limit ${maxDepth}: ${after}`);
          for (let place = 0; place < length; place += 1) {
            const withPlace = depthAfter(length, published, maxDepth, [place]);
            assert.ok(withPlace <= Math.max(maxDepth, published + 2), `${length} layers, published at ${published}, place at ${place}, limit ${maxDepth}: ${withPlace}`);
          }
          assert.ok(after <= length);
          const onto = compactionOnto(length, published, maxDepth);
          if (onto !== undefined) assert.ok(onto > published + 1 && onto <= length - 1, 'absorbs at least one layer, never the base');
        }
      }
    }
  });
});
