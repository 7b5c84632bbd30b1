import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { IntegrityError } from '../../../lib/errors.js';
import { MANIFEST_MAX_BYTES, ancestry, emptyManifest, generationId, manifestProblem, nasPaths, parseManifest, serializeManifest, type Generation, type Manifest } from '../../../lib/nas/format.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const C = 'c'.repeat(64);

function valid(): Manifest {
  const g1 = { parent: null, host: 'desk', created: '2026-11-21T10:00:00.000Z', disks: { vda: A } };
  const id = generationId(g1);
  return {
    ...emptyManifest('vm'),
    revision: 3,
    head: id,
    generations: { [id]: { id, ...g1 } },
    layers: { [A]: { parent: null, size: 10 }, [B]: { parent: A, size: 5 } },
    lease: { host: 'desk', since: '2026-11-21T10:00:00.000Z' },
  };
}

describe('manifest validation', () => {
  it('accepts a merged layer as what a disk or a parent names, and host marks and dropped files', () => {
    // D stands on C; C is gone, but M reads as C: the names resolve through M.
    const D = 'd'.repeat(64);
    const M = 'e'.repeat(64);
    const manifest = valid();
    const g = { parent: null, host: 'desk', created: '2026-11-21T10:00:00.000Z', disks: { vda: C } };
    manifest.generations[generationId(g)] = { id: generationId(g), ...g };
    manifest.layers[D] = { parent: C, size: 3 };
    manifest.layers[M] = { parent: A, size: 4, readsAs: C, catchUpFor: 'laptop' };
    manifest.hosts = { laptop: { generation: 'f'.repeat(64), at: '2026-11-21T10:00:00.000Z' } };
    manifest.dropped = { [C]: '2026-11-21T10:00:00.000Z' };
    assert.equal(manifestProblem(manifest), undefined);
    delete manifest.layers[M];
    assert.match(manifestProblem(manifest) ?? '', /layer d{64} names a parent that is not listed/);
  });

  it('reads manifests of formats 1, 2 and 3 (written before merged layers, state volumes, definitions)', () => {
    assert.equal(manifestProblem({ ...valid(), format: 1 }), undefined);
    assert.equal(manifestProblem({ ...valid(), format: 2 }), undefined);
    assert.equal(manifestProblem({ ...valid(), format: 3 }), undefined);
  });

  it("accepts a generation's definition, part of its id, and refuses one that is not a hash", () => {
    const manifest = valid();
    const g = { parent: null, host: 'desk', created: '2026-11-21T10:00:00.000Z', disks: { vda: A }, definition: C };
    const id = generationId(g);
    manifest.generations[id] = { id, ...g };
    assert.equal(manifestProblem(manifest), undefined);
    (manifest.generations[id] as Generation).definition = B;
    assert.match(manifestProblem(manifest) ?? '', /its id is not the hash of its content/, 'another definition is another generation');
    (manifest.generations[id] as Generation).definition = '../../etc/passwd';
    assert.match(manifestProblem(manifest) ?? '', /bad definition/);
  });

  it('accepts the state volumes @nvram and @tpm as disks of a generation', () => {
    const manifest = valid();
    const g = { parent: null, host: 'desk', created: '2026-11-21T10:00:00.000Z', disks: { vda: A, '@nvram': B, '@tpm': B } };
    manifest.generations[generationId(g)] = { id: generationId(g), ...g };
    assert.equal(manifestProblem(manifest), undefined);
  });

  it('accepts a valid manifest and round-trips it', () => {
    const manifest = valid();
    assert.equal(manifestProblem(manifest), undefined);
    assert.deepEqual(parseManifest(serializeManifest(manifest).toString(), 'm', 'vm'), manifest);
  });

  const broken: Array<[string, (m: Record<string, any>) => void, RegExp]> = [
    ['a newer format', (m) => (m.format = 5), /format 5 was written by a newer kvm-snapshot-sync .*upgrade/],
    ['a state volume of a kind this version does not know', (m) => { (Object.values(m.generations)[0] as any).disks = { vda: A, '@bios': B }; }, /bad disk name "@bios"/],
    ['too many hosts', (m) => (m.hosts = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`h${i}`, { generation: 'f'.repeat(64), at: '2026-11-21T10:00:00.000Z' }]))), /more than 16 hosts/],
    ['a name only a merged file\'s own hash gives', (m) => { m.layers[C] = { parent: A, size: 1, readsAs: B }; (Object.values(m.generations)[0] as any).disks.vdb = C; }, /disk vdb names an unlisted layer/],
    ['no format', (m) => delete m.format, /no format version/],
    ['a head that is not listed', (m) => (m.head = 'c'.repeat(64)), /the head is not a listed generation/],
    ['a generation naming an unlisted layer', (m) => (Object.values(m.generations)[0] as any).disks.vdb = 'c'.repeat(64), /disk vdb names an unlisted layer/],
    ['a layer with an unlisted parent', (m) => (m.layers[B].parent = 'c'.repeat(64)), /names a parent that is not listed/],
    ['a generation without disks', (m) => ((Object.values(m.generations)[0] as any).disks = {}), /no disks/],
    ['a branch to nowhere', (m) => (m.branches.x = { head: 'c'.repeat(64), host: 'h', created: 't', reason: 'r' }), /branch x/],
    ['a negative revision', (m) => (m.revision = -1), /bad revision/],
    ['a bad lease', (m) => (m.lease = { host: 1 }), /bad lease/],
    ['a lease whose time is not a time', (m) => (m.lease.since = 'junk'), /bad lease/],
    ['a generation whose id is not the hash of its content', (m) => ((Object.values(m.generations)[0] as any).host = 'laptop'), /its id is not the hash of its content/],
    ['a head that is its own parent', (m) => ((Object.values(m.generations)[0] as any).parent = m.head), /its id is not the hash of its content/],
    ['a generation id that is not hex', (m) => { const g = Object.values(m.generations)[0] as any; delete m.generations[g.id]; g.id = 'G'.repeat(64); m.generations[g.id] = g; m.head = g.id; }, /generation "G{64}": bad entry/],
    ['a parent that is not an id', (m) => ((Object.values(m.generations)[0] as any).parent = '../x'), /bad parent/],
    ['a time of "junk"', (m) => ((Object.values(m.generations)[0] as any).created = 'junk'), /bad host or time/],
    ['a negative layer size', (m) => (m.layers[A].size = -1), /layer a{64} has no size/],
    ['a fractional layer size', (m) => (m.layers[A].size = 1.5), /layer a{64} has no size/],
    ['a layer size as text', (m) => (m.layers[A].size = '10'), /layer a{64} has no size/],
    ['layer parents that loop', (m) => (m.layers[A].parent = B), /the parents of layer [ab]{64} loop/],
    ['a disk name that is a path', (m) => { (Object.values(m.generations)[0] as any).disks = { '../vda': A }; }, /bad disk name "\.\.\/vda"/],
    ['a branch whose time is not a time', (m) => (m.branches.x = { head: m.head, host: 'h', created: 'junk', reason: 'r' }), /branch x: bad host, time or reason/],
    ['a snapshot without a host', (m) => (m.snapshots = { s: { generation: m.head, created: '2026-11-21T10:00:00.000Z' } }), /snapshot s: bad host or time/],
    ['an empty domain name', (m) => (m.domain = ''), /no domain name/],
    ['a host name with a terminal escape sequence', (m) => ((Object.values(m.generations)[0] as any).host = 'desk\u001b[2J'), /bad host or time/],
    ['a branch name with a terminal escape sequence', (m) => (m.branches['x\u001b]0;owned\u0007'] = { head: m.head, host: 'h', created: '2026-11-21T10:00:00.000Z', reason: 'r' }), /a branch name that is not printable/],
    ['a branch reason with a C1 control', (m) => (m.branches.x = { head: m.head, host: 'h', created: '2026-11-21T10:00:00.000Z', reason: 'r\u009b31m' }), /branch x: bad host, time or reason/],
    ['a layer key with an escape sequence', (m) => (m.layers['\u001b[31m'] = { parent: null, size: 1 }), /bad layer entry "\\u001b\[31m"/],
    ['a merged layer that reads as a path', (m) => (m.layers[B].readsAs = '../x'), /layer b{64}: bad readsAs/],
    ['a merged layer that reads as itself', (m) => (m.layers[B].readsAs = B), /layer b{64}: bad readsAs/],
    ['a catch-up layer that is not merged', (m) => (m.layers[B].catchUpFor = 'laptop'), /layer b{64}: bad catchUpFor/],
    ['merged layers whose parents loop', (m) => { m.layers[C] = { parent: B, size: 1, readsAs: A }; }, /the parents of layer [ab]{64} loop/],
    ['a dropped layer that is still listed', (m) => (m.dropped = { [A]: '2026-11-21T10:00:00.000Z' }), /bad dropped entry/],
    ['a dropped time that is not a time', (m) => (m.dropped = { [C]: 'soon' }), /bad dropped entry/],
    ['a host mark without a generation', (m) => (m.hosts = { laptop: { at: '2026-11-21T10:00:00.000Z' } }), /bad host entry "laptop"/],
  ];
  for (const [name, damage, message] of broken) {
    it(`rejects ${name}`, () => {
      const manifest = structuredClone(valid()) as unknown as Record<string, any>;
      damage(manifest);
      assert.match(manifestProblem(manifest) ?? '', message);
    });
  }
  it('says where bad JSON is', () => assert.throws(() => parseManifest('{', 'nas/manifest.json', 'vm'), /^Error: nas\/manifest.json is not valid JSON/));
  it('refuses the manifest of another domain than the one asked for', () => {
    assert.throws(() => parseManifest(serializeManifest(valid()).toString(), 'nas/work.json', 'work'), /^Error: nas\/work.json: it is the manifest of domain "vm", not of work$/);
  });
  it('refuses a manifest larger than its cap before parsing it', () => {
    const huge = `${serializeManifest(valid()).toString()}${' '.repeat(MANIFEST_MAX_BYTES)}`;
    assert.throws(() => parseManifest(huge, 'm', 'vm'), new RegExp(`^Error: m is larger than ${MANIFEST_MAX_BYTES} bytes$`));
  });
  it('accepts a generation whose parent retention has dropped', () => {
    const manifest = valid();
    const g = { parent: 'd'.repeat(64), host: 'desk', created: '2026-11-22T10:00:00.000Z', disks: { vda: B } };
    const id = generationId(g);
    manifest.generations[id] = { id, ...g };
    manifest.head = id;
    assert.equal(manifestProblem(manifest), undefined);
  });
});

describe('generation ids', () => {
  it('depend on every part, not on the order of disks', () => {
    const g = { parent: null, host: 'desk', created: 't', disks: { vda: A, vdb: B } };
    assert.equal(generationId(g), generationId({ ...g, disks: { vdb: B, vda: A } }));
    assert.notEqual(generationId(g), generationId({ ...g, host: 'laptop' }));
    assert.notEqual(generationId(g), generationId({ ...g, parent: A }));
    assert.notEqual(generationId(g), generationId({ ...g, definition: C }));
    assert.match(generationId(g), /^[0-9a-f]{64}$/);
  });
});

describe('layer chains and paths', () => {
  it('walk a generation back through its parents, bounded', () => {
    const g = (id: string, parent: string | null): Generation => ({ id, parent, host: 'desk', created: '2026-11-21T10:00:00.000Z', disks: { vda: A } });
    const line = { g3: g('g3', 'g2'), g2: g('g2', 'g1'), g1: g('g1', null) };
    assert.deepEqual(ancestry(line, 'g3').map((x) => x.id), ['g3', 'g2', 'g1']);
    assert.deepEqual(ancestry(line, 'g3', (_, index) => index < 2).map((x) => x.id), ['g3', 'g2'], 'as far as asked');
    assert.deepEqual(ancestry({ g3: line.g3, g2: line.g2 }, 'g3').map((x) => x.id), ['g3', 'g2'], 'to the first one retention removed');
    assert.deepEqual(ancestry(line, null), []);
    for (const loop of [{ g1: g('g1', 'g1') }, { g1: g('g1', 'g2'), g2: g('g2', 'g1') }] as Array<Record<string, Generation>>) {
      assert.throws(() => ancestry(loop, 'g1'), (error: unknown) => error instanceof IntegrityError && /generation parents loop at g\d/u.test(error.message));
    }
  });
  it('escape domain names into one path component', () => {
    assert.equal(nasPaths.manifest('my vm/../x'), 'domains/my%20vm%2F..%2Fx/manifest.json');
    assert.equal(nasPaths.upload('vm', A, 'desk top'), `domains/vm/uploads/${A}.desk%20top.part`);
  });
});
