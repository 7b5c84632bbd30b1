import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IntegrityError } from '../../../lib/errors.js';
import { emptyManifest, type Manifest } from '../../../lib/nas/format.js';
import { applyRetention, planRetention } from '../../../lib/nas/retention.js';

const now = new Date('2026-11-21T00:00:00.000Z');
const daysAgo = (n: number) => new Date(now.getTime() - n * 86_400_000).toISOString();
const h = (c: string) => c.repeat(64);

/** A line g0 <- g1 <- ... with one layer each, layer i on layer i-1. */
function line(ages: number[]): Manifest {
  const manifest = emptyManifest('vm');
  ages.forEach((age, i) => {
    const id = `g${i}`;
    manifest.layers[h(String(i))] = { parent: i === 0 ? null : h(String(i - 1)), size: 1 };
    manifest.generations[id] = { id, parent: i === 0 ? null : `g${i - 1}`, host: 'desk', created: daysAgo(age), disks: { vda: h(String(i)) } };
    manifest.head = id;
  });
  return manifest;
}

describe('planRetention', () => {
  const cases: Array<[string, number[], { keepDays: number; keepGenerations: number }, string[]]> = [
    ['keeps everything young', [3, 2, 1], { keepDays: 30, keepGenerations: 1 }, ['g0', 'g1', 'g2']],
    ['drops old generations beyond the minimum', [90, 60, 40, 1], { keepDays: 30, keepGenerations: 2 }, ['g2', 'g3']],
    ['keeps the minimum however old', [90, 80, 70], { keepDays: 30, keepGenerations: 2 }, ['g1', 'g2']],
    ['always keeps the head', [400], { keepDays: 1, keepGenerations: 1 }, ['g0']],
  ];
  for (const [name, ages, policy, kept] of cases) {
    it(name, () => assert.deepEqual([...planRetention(line(ages), now, policy).keepGenerations].sort(), kept));
  }

  it('keeps every layer a kept generation reads through, even an old base', () => {
    const plan = planRetention(line([90, 60, 1]), now, { keepDays: 30, keepGenerations: 1 });
    assert.deepEqual([...plan.keepGenerations], ['g2']);
    assert.deepEqual([...plan.neededLayers].sort(), [h('0'), h('1'), h('2')]);
  });

  it('keeps young branches with their history, drops old ones', () => {
    const manifest = line([90, 1]);
    manifest.layers[h('x')] = { parent: h('0'), size: 1 };
    manifest.layers[h('y')] = { parent: h('0'), size: 1 };
    manifest.generations.x = { id: 'x', parent: 'g0', host: 'laptop', created: daysAgo(5), disks: { vda: h('x') } };
    manifest.generations.y = { id: 'y', parent: 'g0', host: 'laptop', created: daysAgo(50), disks: { vda: h('y') } };
    manifest.branches = {
      young: { head: 'x', host: 'laptop', created: daysAgo(5), reason: 'conflict' },
      old: { head: 'y', host: 'laptop', created: daysAgo(50), reason: 'conflict' },
    };
    const plan = planRetention(manifest, now, { keepDays: 30, keepGenerations: 1 });
    assert.deepEqual(plan.dropBranches, ['old']);
    assert.deepEqual([...plan.keepGenerations].sort(), ['g1', 'x']);
    assert.deepEqual(plan.dropGenerations.sort(), ['g0', 'y']);
    const applied = applyRetention(manifest, plan);
    assert.deepEqual(Object.keys(applied.branches), ['young']);
    assert.equal(Object.hasOwn(applied.layers, h('y')), false);
    assert.equal(Object.hasOwn(applied.layers, h('0')), true, 'the base both kept lines read through');
  });

  it('keeps a snapshot whatever its age, and the layers it reads through', () => {
    const manifest = line([90, 60, 1]);
    manifest.snapshots = { before: { generation: 'g0', host: 'desk', created: daysAgo(90) } };
    const plan = planRetention(manifest, now, { keepDays: 30, keepGenerations: 1 });
    assert.deepEqual([...plan.keepGenerations].sort(), ['g0', 'g2']);
    assert.deepEqual(plan.dropGenerations, ['g1']);
    assert.equal(plan.neededLayers.has(h('0')), true);
  });
});

describe('planRetention on a damaged manifest', () => {
  it('refuses a history that loops instead of walking it forever', () => {
    const manifest = line([3, 2, 1]);
    (manifest.generations.g0 as { parent: string | null }).parent = 'g2';
    assert.throws(() => planRetention(manifest, now, { keepDays: 30, keepGenerations: 1 }), (error: unknown) => error instanceof IntegrityError && /loop/u.test(error.message));
  });
});
