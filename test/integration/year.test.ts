// A year of use, in a few sessions with small limits: the NAS head's chain stays within
// nasChainDepth because the host that pushed publishes its merged layers; a host that
// lacks layers fetches the merged ones instead; retention runs after each push. Two
// simulated hosts share a directory NAS; the hook is the built executable.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { hashOfLayerFileName } from '../../lib/file-names.js';
import { canonicalChain } from '../../lib/nas/chains.js';
import { manifestProblem, nasPaths, type Manifest } from '../../lib/nas/format.js';
import { qemuIo } from '../helpers/disks.js';
import { twoHosts } from '../helpers/two-hosts.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-year-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** Every layer the manifest lists is on the NAS and hashes to its name; the manifest is valid. */
function requireWholeNas(nas: string, domain: string, manifest: Manifest): void {
  assert.equal(manifestProblem(manifest), undefined);
  const dir = join(nas, nasPaths.layersDir(domain));
  const files = new Set(readdirSync(dir).map(hashOfLayerFileName));
  for (const hash of Object.keys(manifest.layers)) {
    assert.ok(files.has(hash), `listed layer ${hash} is on the NAS`);
    assert.equal(createHash('sha256').update(readFileSync(join(dir, `${hash}.qcow2`))).digest('hex'), hash, `layer ${hash} verifies`);
  }
}

const depths = (manifest: Manifest) => {
  const head = manifest.generations[manifest.head as string] as { disks: Record<string, string> };
  return Object.fromEntries(Object.entries(head.disks).map(([target, layer]) => [target, canonicalChain(manifest.layers, layer).length]));
};

describe('a year of use on the NAS', () => {
  it('keeps the NAS head chain within nasChainDepth by merged layers, and a host without the layers fetches those and reads every byte', async (t) => {
    const s = await twoHosts(t, root, 'year', { maxChainDepth: 2, nasChainDepth: 3 });
    if (!s) return;
    const seen: number[] = [];
    for (let i = 1; i <= 8; i += 1) {
      await s.session(s.desk, (disks) => {
        qemuIo(disks.vdb, `write -P ${0x20 + i} 0 1M`, `write -P ${0x40 + i} ${i}M 256k`); // a hot region, and new data
        if (i % 3 === 0) qemuIo(disks.vda, `write -P ${0x60 + i} 1M 64k`);
      });
      const manifest = await s.manifest();
      requireWholeNas(s.nas, s.domain, manifest);
      for (const [target, depth] of Object.entries(depths(manifest))) {
        assert.ok(depth <= 3, `after session ${i}, disk ${target}'s NAS chain holds ${depth} files`);
        seen.push(depth);
      }
    }
    const manifest = await s.manifest();
    const merged = Object.values(manifest.layers).filter((info) => info.readsAs !== undefined);
    assert.ok(merged.length > 0, 'the desk published merged layers');
    assert.match(s.desk.log(s.domain), /published merged layers/u);
    // Everything the laptop needs it fetches through the merged layers, and reads exactly what the desk wrote.
    await s.handOver(s.digests(s.deskDisks));
    const pulls = s.laptop.log(s.domain).split('\n').filter((line) => line.includes('pulling layer'));
    assert.ok(pulls.some((line) => / merged=[0-9a-f]{64}/u.test(line)), `the laptop fetched a merged layer:\n${pulls.join('\n')}`);
    const sessions = Object.keys(manifest.generations).length;
    assert.ok(pulls.length < sessions * 2, `the laptop fetched ${pulls.length} files, fewer than one per disk and session (${sessions * 2})`);
  });

  it('moves the net change to a host that was away, as one catch-up layer per disk, and drops it once the host is back', async (t) => {
    const s = await twoHosts(t, root, 'away');
    if (!s) return;
    await s.handOver(s.digests(s.deskDisks)); // the laptop has the VM once
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop(s.domain);
    // The laptop is away for 8 sessions: each rewrites the same 1 MiB of /home and adds 64 KiB.
    s.ok(s.desk, 'prepare');
    s.ok(s.desk, 'release');
    await s.desk.waitForStop(s.domain);
    for (let i = 1; i <= 8; i += 1) {
      await s.session(s.desk, (disks) => qemuIo(disks.vdb, `write -P ${0x30 + i} 0 1M`, `write -P ${0x50 + i} ${2 + i}M 64k`));
    }
    const manifest = await s.manifest();
    requireWholeNas(s.nas, s.domain, manifest);
    const catchUps = Object.entries(manifest.layers).filter(([, info]) => info.catchUpFor === 'laptop');
    assert.equal(catchUps.length, 1, `one catch-up layer for the laptop's return, for /home only: ${JSON.stringify(catchUps)}`);
    // Without it, the laptop would fetch the 8 layers of /home, each at least the 1 MiB rewritten.
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks), 'the laptop reads exactly what the desk wrote');
    const pulled = [...s.laptop.log(s.domain).matchAll(/pulling layer .*?bytes=(\d+)/gu)].slice(-8);
    const lines = s.laptop.log(s.domain).split('\n').filter((line) => line.includes('pulling layer')).slice(-3);
    const last = lines.at(-1) ?? '';
    assert.match(last, new RegExp(`merged=${catchUps[0]?.[0]}`, 'u'), `the return fetched the catch-up layer: ${lines.join('\n')}`);
    const bytes = Number(/bytes=(\d+)/u.exec(last)?.[1]);
    const netChange = 2 ** 20 + 8 * 64 * 1024;
    assert.ok(bytes < 1.5 * netChange, `it moved ${bytes} bytes for a net change of ${netChange} (${pulled.length} pulls)`);
    // Back in step: the desk's next upkeep drops the catch-up from the manifest.
    s.ok(s.laptop, 'release');
    await s.laptop.waitForStop(s.domain);
    await s.session(s.desk, (disks) => qemuIo(disks.vdb, 'write -P 0x70 0 64k'));
    const after = await s.manifest();
    assert.equal(Object.hasOwn(after.layers, catchUps[0]?.[0] as string), false, 'the catch-up left the manifest');
    assert.ok(Object.hasOwn(after.dropped ?? {}, catchUps[0]?.[0] as string), 'and waits a day before its file goes');
    requireWholeNas(s.nas, s.domain, after);
  });
});
