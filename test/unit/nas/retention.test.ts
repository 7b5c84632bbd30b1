import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IntegrityError } from '../../../lib/errors.js';
import { emptyManifest, generationId, manifestProblem, type Manifest } from '../../../lib/nas/format.js';
import { applyRetention, planRetention, type RetentionPolicy } from '../../../lib/nas/retention.js';

const now = new Date('2026-11-21T00:00:00.000Z');
const daysAgo = (n: number) => new Date(now.getTime() - n * 86_400_000).toISOString();
const h = (c: string) => c.repeat(64);
/** Everything younger than keepDays, and the nearest keepGenerations (no daily or weekly tiers). */
const simple = ({ keepDays, keepGenerations }: { keepDays: number; keepGenerations: number }): RetentionPolicy => ({ keepGenerations, allDays: keepDays, dailyDays: 0, weeklyDays: 0, branchDays: keepDays });

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
    it(name, () => assert.deepEqual([...planRetention(line(ages), now, simple(policy)).keepGenerations].sort(), kept));
  }

  it('keeps every layer a kept generation reads through, even an old base', () => {
    const plan = planRetention(line([90, 60, 1]), now, simple({ keepDays: 30, keepGenerations: 1 }));
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
    const plan = planRetention(manifest, now, simple({ keepDays: 30, keepGenerations: 1 }));
    assert.deepEqual(plan.dropBranches, ['old']);
    assert.deepEqual([...plan.keepGenerations].sort(), ['g1', 'x']);
    assert.deepEqual(plan.dropGenerations.sort(), ['g0', 'y']);
    const applied = applyRetention(manifest, plan, now);
    assert.deepEqual(Object.keys(applied.branches), ['young']);
    assert.equal(Object.hasOwn(applied.layers, h('y')), false);
    assert.equal(Object.hasOwn(applied.layers, h('0')), true, 'the base both kept lines read through');
  });

  it('keeps a snapshot whatever its age, and the layers it reads through', () => {
    const manifest = line([90, 60, 1]);
    manifest.snapshots = { before: { generation: 'g0', host: 'desk', created: daysAgo(90) } };
    const plan = planRetention(manifest, now, simple({ keepDays: 30, keepGenerations: 1 }));
    assert.deepEqual([...plan.keepGenerations].sort(), ['g0', 'g2']);
    assert.deepEqual(plan.dropGenerations, ['g1']);
    assert.equal(plan.neededLayers.has(h('0')), true);
  });
});

describe('planRetention with the default tiers', () => {
  const tiers: RetentionPolicy = { keepGenerations: 3, allDays: 7, dailyDays: 30, weeklyDays: 182, branchDays: 90 };
  /** Two sessions a day (at 08:00 and 20:00 UTC) for `days` days up to `now`. */
  function twiceADay(days: number): Manifest {
    const ages: number[] = [];
    for (let d = days - 1; d >= 0; d -= 1) ages.push(d + 16 / 24, d + 4 / 24);
    return line(ages);
  }

  it('keeps all of the last week, the newest of each day for a month, of each week for six months', () => {
    const manifest = twiceADay(400);
    const plan = planRetention(manifest, now, tiers);
    const kept = [...plan.keepGenerations].map((id) => (now.getTime() - Date.parse((manifest.generations[id] as { created: string }).created)) / 86_400_000);
    const within = (from: number, to: number) => kept.filter((age) => age >= from && age < to).length;
    assert.equal(within(0, 7), 14, 'both sessions of each of the last 7 days');
    assert.equal(within(7, 30), 23, 'one a day up to 30 days');
    assert.ok(within(30, 182) >= 21 && within(30, 182) <= 23, `one a week up to 26 weeks (${within(30, 182)})`);
    assert.equal(within(182, 1000), 0, 'nothing older');
    for (const age of kept.filter((a) => a >= 7 && a < 30)) assert.ok(age % 1 < 0.5, `the newest of its day is kept (age ${age.toFixed(2)})`);
    assert.equal(plan.keepGenerations.size, 14 + 23 + within(30, 182));
  });

  it('keeps a conflict branch 90 days, and a snapshot of a year ago without its history', () => {
    const manifest = twiceADay(400);
    const oldest = Object.keys(manifest.generations).find((id) => manifest.generations[id]?.parent === null) as string;
    manifest.snapshots = { install: { generation: oldest, host: 'desk', created: daysAgo(399) } };
    manifest.branches = {
      recent: { head: 'g700', host: 'laptop', created: daysAgo(60), reason: 'conflict' },
      old: { head: 'g500', host: 'laptop', created: daysAgo(100), reason: 'conflict' },
    };
    const plan = planRetention(manifest, now, tiers);
    assert.deepEqual(plan.dropBranches, ['old']);
    assert.ok(plan.keepGenerations.has(oldest), 'the snapshot');
    assert.ok(!plan.keepGenerations.has('g1'), "not the snapshot's history");
  });
});

describe('planRetention with merged layers', () => {
  // base <- 1 <- 2 <- 3 <- 4 (head); M reads as 3 on the base; g1 (layer 1) is kept too.
  function merged(): Manifest {
    const manifest = line([1, 1, 1, 1, 1]);
    for (let i = 0; i <= 4; i += 1) (manifest.layers[h(String(i))] as { size: number }).size = i === 0 ? 1000 : 100;
    manifest.layers[h('m')] = { parent: h('0'), size: 300, readsAs: h('3') };
    return manifest;
  }
  /** Only the head (ages are all 1 day: no tier keeps more). */
  const headOnly: RetentionPolicy = { keepGenerations: 1, allDays: 0, dailyDays: 0, weeklyDays: 0, branchDays: 1 };

  it("keeps the head's chain in the fewest files: the merged layer, not the three it stands for", () => {
    const plan = planRetention(merged(), now, headOnly);
    assert.deepEqual([...plan.neededLayers].sort(), [h('0'), h('4'), h('m')].sort());
    assert.deepEqual(plan.dropLayers.sort(), [h('1'), h('2'), h('3')].sort());
  });

  it('keeps an older generation by the fewest bytes added: its own small layers', () => {
    const manifest = merged();
    // A big merged layer reading as 2: fewer files for g2, but far more bytes than layers 1 and 2.
    manifest.layers[h('n')] = { parent: h('0'), size: 900, readsAs: h('2') };
    manifest.snapshots = { s: { generation: 'g2', host: 'desk', created: daysAgo(1) } };
    const plan = planRetention(manifest, now, headOnly);
    assert.deepEqual([...plan.neededLayers].sort(), [h('0'), h('1'), h('2'), h('4'), h('m')].sort());
    const applied = applyRetention(manifest, plan, now);
    assert.deepEqual(Object.keys(applied.dropped ?? {}).sort(), [h('3'), h('n')].sort());
    assert.equal(applied.dropped?.[h('3')], now.toISOString());
    assert.equal(Object.hasOwn(applied.layers, h('3')), false);
  });
});

describe('planRetention with catch-up layers', () => {
  it("keeps what a host away since generation 1 would fetch (the catch-up made for it), not an older catch-up", () => {
    const manifest = line([1, 1, 1, 1, 1]);
    for (const info of Object.values(manifest.layers)) info.size = 100;
    manifest.layers[h('c')] = { parent: h('1'), size: 50, readsAs: h('4'), catchUpFor: 'laptop' };
    manifest.layers[h('d')] = { parent: h('1'), size: 40, readsAs: h('3'), catchUpFor: 'laptop' };
    manifest.hosts = { laptop: { generation: 'g1', at: daysAgo(1) } };
    const plan = planRetention(manifest, now, { keepGenerations: 1, allDays: 0, dailyDays: 0, weeklyDays: 0, branchDays: 90 });
    assert.deepEqual([...plan.keepGenerations].sort(), ['g1', 'g4'], "the head, and the laptop's place");
    assert.ok(plan.neededLayers.has(h('c')), 'the catch-up it would fetch');
    assert.ok(plan.dropLayers.includes(h('d')), 'not the older one (d and layer 4 together cost more than c)');
    // Once the laptop is back in step, its catch-up goes.
    manifest.hosts = { laptop: { generation: 'g4', at: daysAgo(0) } };
    assert.ok(planRetention(manifest, now, { keepGenerations: 1, allDays: 0, dailyDays: 0, weeklyDays: 0, branchDays: 90 }).dropLayers.includes(h('c')));
  });
});

describe('planRetention of a branch', () => {
  it('keeps a branch by its own layers, not through a catch-up layer, so a rollback to it leaves the NAS whole', () => {
    const policy: RetentionPolicy = { keepGenerations: 10, allDays: 7, dailyDays: 30, weeklyDays: 182, branchDays: 90 };
    const now = new Date('2026-11-21T00:00:00.000Z');
    const at = (h: number) => new Date(now.getTime() - h * 3600_000).toISOString();
    const H = (c: string) => c.repeat(64);
    const [base, p, h2, h3, c, lb] = ['0', '1', '2', '3', 'c', 'b'].map(H) as [string, string, string, string, string, string];
    const m = emptyManifest('vm');
    const gen = (parent: string | null, host: string, created: string, layer: string) => {
      const made = { parent, host, created, disks: { vda: layer } };
      const id = generationId(made);
      m.generations[id] = { id, ...made };
      return id;
    };
    m.layers[base] = { parent: null, size: 1000 };
    m.layers[p] = { parent: base, size: 10 };
    m.layers[h2] = { parent: p, size: 50 };
    m.layers[h3] = { parent: h2, size: 50 };
    const g1 = gen(null, 'laptop', at(10), p); // the laptop's place
    const g2 = gen(g1, 'desk', at(8), h2);
    const g3 = gen(g2, 'desk', at(6), h3);
    // The desk's upkeep made a catch-up for the laptop: reads as h3, on p.
    m.layers[c] = { parent: p, size: 20, readsAs: h3, catchUpFor: 'laptop' };
    // The laptop had worked offline on g1: conflict, resolve --keep local: g3 becomes a branch.
    m.layers[lb] = { parent: p, size: 5 };
    const gb = gen(g1, 'laptop', at(4), lb);
    m.head = gb;
    m.branches['conflict-x'] = { head: g3, host: 'desk', created: at(3), reason: 'kept laptop' };
    m.hosts = { laptop: { generation: gb, at: at(3) }, desk: { generation: g3, at: at(6) } };
    assert.equal(manifestProblem(m), undefined);
    const plan = planRetention(m, now, policy);
    assert.ok(plan.neededLayers.has(h3) && plan.neededLayers.has(h2), 'the branch is kept by its own layers');
    assert.ok(plan.dropLayers.includes(c), 'and the catch-up (the laptop is back: its place is the head) leaves');
    const after = applyRetention(m, plan, now);
    delete after.dropped; // a day later, removed and forgotten
    // kss rollback --to conflict-x: a new head whose disk is h3 (accepted: h3 is provided by the catch-up).
    const rolled = gen(gb, 'desk', at(1), h3);
    after.generations[rolled] = m.generations[rolled]!;
    after.head = rolled;
    assert.equal(manifestProblem(after), undefined, 'the rollback writes a valid manifest');
    assert.ok(planRetention(after, now, policy).neededLayers.has(h3), 'and retention goes on after the rollback');
  });
});

describe('planRetention on a damaged manifest', () => {
  it('refuses a history that loops instead of walking it forever', () => {
    const manifest = line([3, 2, 1]);
    (manifest.generations.g0 as { parent: string | null }).parent = 'g2';
    assert.throws(() => planRetention(manifest, now, simple({ keepDays: 30, keepGenerations: 1 })), (error: unknown) => error instanceof IntegrityError && /loop/u.test(error.message));
  });
});
