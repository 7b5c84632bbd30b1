import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IntegrityError } from '../../../lib/errors.js';
import { canonicalChain, cheapestChain, loopIn, providers } from '../../../lib/nas/chains.js';
import type { LayerInfo } from '../../../lib/nas/format.js';

const h = (c: string) => c.repeat(64);
const [BASE, L1, L2, L3, L4, M, N, F] = ['0', '1', '2', '3', '4', 'a', 'b', 'f'].map(h) as [string, string, string, string, string, string, string, string];

/** base <- 1 <- 2 <- 3 <- 4, a merged M reading as 3 on the base, a catch-up N reading as 4 on 1, a full image F reading as 4. */
function layers(): Record<string, LayerInfo> {
  return {
    [BASE]: { parent: null, size: 1000 },
    [L1]: { parent: BASE, size: 100 },
    [L2]: { parent: L1, size: 100 },
    [L3]: { parent: L2, size: 100 },
    [L4]: { parent: L3, size: 100 },
    [M]: { parent: BASE, size: 150, readsAs: L3 },
    [N]: { parent: L1, size: 120, readsAs: L4, catchUpFor: 'laptop' },
    [F]: { parent: null, size: 1100, readsAs: L4 },
  };
}

const files = (steps: Array<{ file: string }>) => steps.map((step) => step.file);

describe('NAS chains', () => {
  it('list every file that reads as a name, the original first', () => {
    assert.deepEqual(providers(layers()).get(L4), [L4, N, F]);
    assert.deepEqual(providers(layers()).get(L3), [L3, M]);
  });

  it('keep the fewest files as the canonical chain, through merged layers, without catch-up layers', () => {
    // 4 -> M (as 3) -> base: three files instead of five; F alone would be one, but it is full: [1, 1100] beats [3, 1250].
    assert.deepEqual(files(canonicalChain(layers(), L4)), [F]);
    const noFull = layers();
    delete noFull[F];
    const chain = canonicalChain(noFull, L4);
    assert.deepEqual(files(chain), [L4, M, BASE]);
    assert.deepEqual(chain.map((step) => step.layer), [L4, L3, BASE], 'each file is kept under the name the layer above uses');
    assert.deepEqual(files(canonicalChain(noFull, L2)), [L2, L1, BASE], 'an older layer keeps its own chain');
  });

  it('fetch the fewest bytes down to what a host has', () => {
    // Has 1: the catch-up N (120) beats 4+3+2 (300) and M+... (needs base, which it has: 4 + M = 250).
    assert.deepEqual(files(cheapestChain(layers(), L4, (name) => name === L1 || name === BASE).steps), [N]);
    // Has 3: only layer 4 is missing.
    assert.deepEqual(cheapestChain(layers(), L4, (name) => [L3, L2, L1, BASE].includes(name)), { steps: [{ layer: L4, file: L4 }], bytes: 100 });
    // Has nothing: the full image (1100) beats N + 1 + base (1220) and 4 + M + base (1250).
    assert.deepEqual(cheapestChain(layers(), L4, () => false), { steps: [{ layer: L4, file: F }], bytes: 1100 });
    // Has what it asks for: nothing to fetch.
    assert.deepEqual(cheapestChain(layers(), L4, (name) => name === L4), { steps: [], bytes: 0 });
  });

  it('refuse a name no file provides, and parents that loop, with an IntegrityError', () => {
    const gone = layers();
    delete gone[L2];
    delete gone[M];
    delete gone[N];
    delete gone[F];
    assert.throws(() => canonicalChain(gone, L4), (error: unknown) => error instanceof IntegrityError && /no file on the NAS provides layer 2{64}/u.test(error.message));
    const loop = { [L1]: { parent: L2, size: 1 }, [L2]: { parent: null, size: 1 }, [M]: { parent: L1, size: 1, readsAs: L2 } };
    assert.equal(typeof loopIn(loop), 'string');
    assert.equal(loopIn(layers()), undefined);
    // A walk that meets the loop says so instead of going round (validation refuses such a manifest first).
    assert.throws(() => canonicalChain(loop, L1), (error: unknown) => error instanceof IntegrityError && /the parents of layer 1{64} loop/u.test(error.message));
  });

  it('walk a very deep chain without overflowing the stack', () => {
    const deep: Record<string, LayerInfo> = {};
    const name = (i: number) => i.toString(16).padStart(64, '0');
    for (let i = 0; i < 200_000; i += 1) deep[name(i)] = { parent: i === 0 ? null : name(i - 1), size: 1 };
    assert.equal(canonicalChain(deep, name(199_999)).length, 200_000);
    assert.equal(loopIn(deep), undefined);
  });
});
