// The transport contract (lib/nas/transport.ts), run against both transports: a
// directory, and SSH to a real sshd in a network namespace behind a shaped link.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, linkSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { IntegrityError, NasUnreachableError } from '../../lib/errors.js';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import { SshTransport } from '../../lib/nas/ssh-transport.js';
import { placeOf, type Place } from '../../lib/nas/share-walk.js';
import type { NasTransport } from '../../lib/nas/transport.js';
import { shellQuote } from '../../lib/shell-quote.js';
import { SSH_NAS_TOOLS, startSshNas, type SshNas } from '../helpers/ssh-nas.js';
import { requireTools } from '../helpers/tools.js';

const ODD = `odd 'q" $(touch pwned) é`;

function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

interface Setup {
  transport: NasTransport;
  /** The NAS root as a local path (both NAS kinds keep their files on this machine). */
  root: string;
  /** An SSH NAS. */
  nas?: SshNas;
  stop(): void;
}

/** An SSH NAS whose sshd serves SFTP in-process (the transport's small operations then use it), or none (they run as scripts). */
const sshKind =
  (sftp: 'internal' | 'none') =>
  async (t: TestContext): Promise<Setup | undefined> => {
    if (!requireTools(t, ...SSH_NAS_TOOLS)) return undefined;
    const base = mkdtempSync(join(tmpdir(), 'kss-sshroot-'));
    const root = join(base, `nas ${ODD}`);
    const nas: SshNas = await startSshNas({ root, sftp });
    return {
      transport: new SshTransport({ root, target: nas.target, opTimeoutMs: 10_000, stallTimeoutMs: 10_000, compress: true }),
      root,
      nas,
      stop: () => {
        nas.stop();
        rmSync(base, { recursive: true, force: true });
      },
    };
  };

const kinds: Record<string, (t: TestContext) => Promise<Setup | undefined>> = {
  dir: async () => {
    const base = mkdtempSync(join(tmpdir(), 'kss-dirnas-'));
    const root = join(base, `nas ${ODD}`);
    mkdirSync(root);
    return {
      transport: new DirTransport({ root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }),
      root,
      stop: () => rmSync(base, { recursive: true, force: true }),
    };
  },
  ssh: sshKind('internal'),
  'ssh without SFTP': sshKind('none'),
};

for (const [kind, setUp] of Object.entries(kinds)) {
  describe(`${kind} transport`, () => {
    let setup: Setup | undefined;
    let local: string;
    before(async (t) => {
      setup = await setUp(t as unknown as TestContext);
      local = mkdtempSync(join(tmpdir(), 'kss-local-'));
    });
    after(async () => {
      await setup?.transport.close();
      setup?.stop();
      rmSync(local, { recursive: true, force: true });
    });
    const ready = (t: TestContext): Setup | undefined => {
      if (!setup) requireTools(t, ...SSH_NAS_TOOLS);
      return setup;
    };

    it('reads, writes, lists, renames and removes small files under odd names', async (t) => {
      const s = ready(t);
      if (!s) return;
      const path = `domains/${ODD}/manifest.json`;
      assert.equal(await s.transport.readFile(path, 1024), undefined);
      assert.equal(await s.transport.stat(path), undefined);
      await s.transport.writeFileAtomic(path, Buffer.from('first'));
      await s.transport.writeFileAtomic(path, Buffer.from('second\n\0binary'));
      assert.deepEqual(await s.transport.readFile(path, 1024), Buffer.from('second\n\0binary'));
      assert.equal(readFileSync(join(s.root, path), 'utf8'), 'second\n\0binary', 'it is where the path says');
      const entry = await s.transport.stat(path);
      assert.equal(entry?.size, 14);
      assert.equal(entry?.isDirectory, false);
      assert.ok(Math.abs((entry?.mtimeMs ?? 0) - Date.now()) < 60_000);
      assert.deepEqual((await s.transport.list(`domains/${ODD}`)).map((e) => e.name), ['manifest.json']);
      assert.deepEqual(await s.transport.list('domains/none'), []);
      assert.equal(await s.transport.rename(path, `domains/${ODD}/moved $x`), true);
      assert.equal(await s.transport.rename(path, `domains/${ODD}/again`), false);
      await s.transport.remove(`domains/${ODD}`);
      await s.transport.remove(`domains/${ODD}`);
      assert.deepEqual(await s.transport.list('domains'), []);
    });

    it('creates a directory exclusively, and tells the owner and age otherwise', async (t) => {
      const s = ready(t);
      if (!s) return;
      const first = await s.transport.mkdirExclusive('domains/x/lock', 'owner.json', Buffer.from('{"host":"a"}'));
      assert.deepEqual(first, { created: true });
      const second = await s.transport.mkdirExclusive('domains/x/lock', 'owner.json', Buffer.from('{"host":"b"}'));
      assert.equal(second.created, false);
      assert.ok(!second.created && second.ownerData?.toString() === '{"host":"a"}');
      assert.ok(!second.created && second.ageMs >= 0 && second.ageMs < 10_000);
      const racers = await Promise.all(
        Array.from({ length: 6 }, (_, i) => s.transport.mkdirExclusive('domains/y/lock', 'owner.json', Buffer.from(String(i)))),
      );
      assert.equal(racers.filter((r) => r.created).length, 1, 'exactly one of six racers wins');
    });

    it('replaces a file only when it is unchanged, under the lock, in one call', async (t) => {
      const s = ready(t);
      if (!s) return;
      const dir = `domains/${ODD}`;
      const path = `${dir}/manifest.json`;
      const lock = (owner: string) => ({ path: `${dir}/lock`, ownerName: 'owner.json', ownerData: Buffer.from(owner) });
      const guard = (expectedSha256: string | null, owner = '{"token":"a"}', required: string[] = []) => ({ expectedSha256, required, lock: lock(owner) });

      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('one'), guard(sha256(Buffer.from('x')))), { outcome: 'changed' });
      assert.equal(existsSync(join(s.root, path)), false, 'a file that must exist and does not: nothing written');
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('one'), guard(null)), { outcome: 'replaced' });
      assert.equal(readFileSync(join(s.root, path), 'utf8'), 'one');
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('two'), guard(null)), { outcome: 'changed' });
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('two'), guard(sha256(Buffer.from('one')), undefined, [`${dir}/layers/l $(x).qcow2`])), {
        outcome: 'missing',
        path: `${dir}/layers/l $(x).qcow2`,
      });
      mkdirSync(join(s.root, dir, 'layers'));
      writeFileSync(join(s.root, dir, 'layers/l $(x).qcow2'), '');
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('two'), guard(sha256(Buffer.from('one')), undefined, [`${dir}/layers/l $(x).qcow2`])), { outcome: 'replaced' });
      assert.equal(readFileSync(join(s.root, path), 'utf8'), 'two');
      assert.equal(existsSync(join(s.root, dir, 'lock')), false, 'the lock is removed after each call');

      // A held lock: nothing is written, and the holder and its age are told.
      assert.deepEqual(await s.transport.mkdirExclusive(`${dir}/lock`, 'owner.json', Buffer.from('{"token":"held"}')), { created: true });
      const busy = await s.transport.replaceIfUnchanged(path, Buffer.from('three'), guard(sha256(Buffer.from('two'))));
      assert.equal(busy.outcome, 'locked');
      assert.ok(busy.outcome === 'locked' && busy.ownerData?.toString() === '{"token":"held"}' && busy.ageMs >= 0 && busy.ageMs < 10_000);
      assert.equal(readFileSync(join(s.root, path), 'utf8'), 'two');
      assert.equal(existsSync(join(s.root, dir, 'lock', 'owner.json')), true, "another holder's lock is left alone");
      await s.transport.remove(`${dir}/lock`);

      // Racers from the same content: exactly one replaces it.
      const racers = await Promise.all(
        Array.from({ length: 6 }, (_, i) => s.transport.replaceIfUnchanged(path, Buffer.from(`racer ${i}`), guard(sha256(Buffer.from('two')), `{"token":"${i}"}`))),
      );
      assert.equal(racers.filter((r) => r.outcome === 'replaced').length, 1, 'exactly one of six racers writes');
      assert.ok(racers.every((r) => r.outcome !== 'missing'));
      assert.match(readFileSync(join(s.root, path), 'utf8'), /^racer \d$/);
      assert.deepEqual(await s.transport.list(dir).then((entries) => entries.map((e) => e.name).sort()), ['layers', 'manifest.json'], 'no temp file, no lock left');

      // Files to remove go only with a write that finds the file unchanged, under the lock.
      const doomed = [`${dir}/layers/old $(x).qcow2`, `${dir}/layers/older.qcow2`];
      for (const file of doomed) writeFileSync(join(s.root, file), 'old');
      const current = readFileSync(join(s.root, path));
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('four'), { ...guard(sha256(Buffer.from('stale'))), remove: doomed }), { outcome: 'changed' });
      for (const file of doomed) assert.ok(existsSync(join(s.root, file)), `${file} stays when the manifest changed meanwhile`);
      assert.deepEqual(await s.transport.replaceIfUnchanged(path, Buffer.from('four'), { ...guard(sha256(current)), remove: [...doomed, `${dir}/layers/gone.qcow2`] }), { outcome: 'replaced' });
      for (const file of doomed) assert.equal(existsSync(join(s.root, file)), false, `${file} is removed with the write`);
      assert.equal(readFileSync(join(s.root, path), 'utf8'), 'four');
      await s.transport.remove(dir);
    });

    it('moves a layer both ways, byte for byte, and resumes a partial upload', async (t) => {
      const s = ready(t);
      if (!s) return;
      const data = randomBytes(24 * 2 ** 20);
      const hash = sha256(data);
      const file = join(local, 'layer.qcow2');
      writeFileSync(file, data);
      const part = `domains/${ODD}/uploads/${hash}.h.part`;
      const target = `domains/${ODD}/layers/${hash}.qcow2`;

      // A partial upload left by an earlier, interrupted run.
      mkdirSync(join(s.root, `domains/${ODD}/uploads`), { recursive: true });
      writeFileSync(join(s.root, part), data.subarray(0, 10 * 2 ** 20));
      const progress: number[] = [];
      const put = await s.transport.putLayer(file, hash, part, target, { onProgress: (done) => progress.push(done) });
      assert.deepEqual(put, { bytesMoved: 14 * 2 ** 20, alreadyThere: false, resumedFrom: 10 * 2 ** 20 });
      assert.equal(progress.at(-1), data.length);
      assert.equal(sha256(readFileSync(join(s.root, target))), hash);
      assert.equal(existsSync(join(s.root, part)), false);
      assert.equal((await s.transport.putLayer(file, hash, part, target)).alreadyThere, true);

      const got = await s.transport.getLayer(target, hash, data.length, join(local, 'pulled.part'));
      assert.equal(got.resumedFrom, 0);
      assert.ok(readFileSync(join(local, 'pulled.part')).equals(data));

      // A partial download is continued.
      writeFileSync(join(local, 'again.part'), data.subarray(0, 5 * 2 ** 20));
      const resumed = await s.transport.getLayer(target, hash, data.length, join(local, 'again.part'));
      assert.equal(resumed.resumedFrom, 5 * 2 ** 20);
      assert.ok(readFileSync(join(local, 'again.part')).equals(data));
    });

    it('holds a capped upload to its cap, resumed too, and publishes it verified', async (t) => {
      const s = ready(t);
      if (!s) return;
      const data = randomBytes(6 * 2 ** 20);
      const hash = sha256(data);
      const file = join(local, 'capped.qcow2');
      writeFileSync(file, data);
      const part = `domains/capped/uploads/${hash}.h.part`;
      const target = `domains/capped/layers/${hash}.qcow2`;
      mkdirSync(join(s.root, 'domains/capped/uploads'), { recursive: true });
      writeFileSync(join(s.root, part), data.subarray(0, 2 * 2 ** 20));
      const cap = 2_000_000;
      const progress: number[] = [];
      const began = Date.now();
      const put = await s.transport.putLayer(file, hash, part, target, { maxBytesPerSecond: cap, onProgress: (done) => progress.push(done) });
      const seconds = (Date.now() - began) / 1000;
      // A lower bound only: a loaded machine makes it slower, never faster.
      const least = (4 * 2 ** 20) / cap;
      assert.ok(seconds >= least * 0.95, `4 MiB at ${cap} bytes/s took ${seconds.toFixed(2)} s, not at least ${least.toFixed(2)} s`);
      assert.deepEqual(put, { bytesMoved: 4 * 2 ** 20, alreadyThere: false, resumedFrom: 2 * 2 ** 20 });
      assert.equal(progress.at(-1), data.length);
      assert.equal(sha256(readFileSync(join(s.root, target))), hash);
    });

    it('starts over when the kept prefix of an upload is not the right one', async (t) => {
      const s = ready(t);
      if (!s) return;
      const data = randomBytes(4 * 2 ** 20);
      const hash = sha256(data);
      const file = join(local, 'layer2.qcow2');
      writeFileSync(file, data);
      const part = `domains/d/uploads/${hash}.h.part`;
      mkdirSync(join(s.root, 'domains/d/uploads'), { recursive: true });
      writeFileSync(join(s.root, part), randomBytes(2 ** 20));
      const result = await s.transport.putLayer(file, hash, part, `domains/d/layers/${hash}.qcow2`);
      assert.deepEqual(result, { bytesMoved: data.length, alreadyThere: false, resumedFrom: 0 }, 'every byte was sent again, from the start');
      assert.equal(sha256(readFileSync(join(s.root, `domains/d/layers/${hash}.qcow2`))), hash);
      assert.deepEqual(readdirSync(join(s.root, 'domains/d/uploads')), [], 'the bad prefix is gone');
    });

    it('refuses a layer that does not match its hash, changing nothing', async (t) => {
      const s = ready(t);
      if (!s) return;
      const data = randomBytes(3 * 2 ** 20);
      const hash = sha256(data);
      const path = `domains/c/layers/${hash}.qcow2`;
      mkdirSync(join(s.root, 'domains/c/layers'), { recursive: true });
      data[1000] = (data[1000] as number) ^ 0xff;
      writeFileSync(join(s.root, path), data);
      chmodSync(join(s.root, path), 0o444);
      const part = join(local, 'corrupt.part');
      await assert.rejects(s.transport.getLayer(path, hash, data.length, part), IntegrityError);
      assert.equal(existsSync(part), false, 'the bad download is not kept');

      // Uploading a local file whose bytes are not its name publishes nothing.
      const file = join(local, 'bad-local.qcow2');
      writeFileSync(file, data);
      const other = sha256(Buffer.from('something else'));
      await assert.rejects(s.transport.putLayer(file, other, `domains/c/uploads/${other}.h.part`, `domains/c/layers/${other}.qcow2`), IntegrityError);
      assert.equal(existsSync(join(s.root, `domains/c/layers/${other}.qcow2`)), false);
    });

    it('moves a layer both ways, compressed or not, where the NAS has no zstd', async (t) => {
      const s = ready(t);
      if (!s) return;
      if (!s.nas) return t.skip('a NAS over SSH only');
      // The NAS account's PATH: every program there is but zstd.
      const bin = join(local, 'bin without zstd');
      mkdirSync(bin);
      for (const name of readdirSync('/usr/bin')) if (!name.startsWith('zstd')) symlinkSync(join('/usr/bin', name), join(bin, name));
      s.nas.setShellStartup(`PATH=${shellQuote(bin)}\n`);
      const data = randomBytes(3 * 2 ** 20);
      const hash = sha256(data);
      const file = join(local, 'plain.qcow2');
      writeFileSync(file, data);
      const target = `domains/plain/layers/${hash}.qcow2`;
      // New transports, each: one that has not heard from the NAS yet assumes zstd (over SFTP no script tells it first).
      const fresh = () => new SshTransport({ ...(s.transport as unknown as { options: ConstructorParameters<typeof SshTransport>[0] }).options });
      const [up, down] = [fresh(), fresh()];
      try {
        assert.equal((await up.putLayer(file, hash, `domains/plain/uploads/${hash}.h.part`, target)).alreadyThere, false);
        assert.equal(sha256(readFileSync(join(s.root, target))), hash);
        await down.getLayer(target, hash, data.length, join(local, 'plain.part'));
        assert.ok(readFileSync(join(local, 'plain.part')).equals(data));
      } finally {
        s.nas.setShellStartup(undefined);
        await up.close();
        await down.close();
      }
    });

    it('runs the NAS account’s shell for none of its small operations where sshd serves SFTP, and for each where not', async (t) => {
      const s = ready(t);
      if (!s) return;
      if (!s.nas) return t.skip('a NAS over SSH only');
      const runs = join(s.root, '..', 'shell runs');
      s.nas.setShellStartup(`echo run >> ${shellQuote(runs)}\n`);
      const lock = { path: 'shells/manifest.lock', ownerName: 'owner', ownerData: Buffer.from('me') };
      try {
        await s.transport.writeFileAtomic('shells/a', Buffer.from('one'));
        assert.equal((await s.transport.readFile('shells/a', 16))?.toString(), 'one');
        assert.equal((await s.transport.stat('shells/a'))?.size, 3);
        assert.deepEqual((await s.transport.list('shells')).map((entry) => entry.name), ['a']);
        assert.equal(await s.transport.rename('shells/a', 'shells/b'), true);
        assert.deepEqual(await s.transport.replaceIfUnchanged('shells/b', Buffer.from('two'), { expectedSha256: sha256(Buffer.from('one')), required: [], lock }), { outcome: 'replaced' });
        assert.deepEqual(await s.transport.mkdirExclusive('shells/held', 'owner', Buffer.from('me')), { created: true });
        await s.transport.remove('shells');
      } finally {
        s.nas.setShellStartup(undefined);
      }
      const shells = existsSync(runs) ? readFileSync(runs, 'utf8').split('\n').filter((line) => line === 'run').length : 0;
      if (kind === 'ssh') assert.equal(shells, 0, 'every small operation went over SFTP, which runs no shell');
      else assert.equal(shells, 8, 'without SFTP, each small operation is a script the login shell runs');
      rmSync(runs, { force: true });
    });

    // Runs last: no operation above, nor the one below, ran a command hidden in a name.
    const assertNothingRan = (s: Setup) => {
      for (const dir of [process.cwd(), s.root, join(s.root, '..'), '/root', '/']) {
        assert.equal(existsSync(join(dir, 'pwned')), false, `a name was run as a command (found ${dir}/pwned)`);
      }
    };

    it('reads nothing unbounded: a file over the limit, and a layer of another size than the manifest says, are refused', async (t) => {
      const s = ready(t);
      if (!s) return;
      mkdirSync(join(s.root, 'domains/big/layers'), { recursive: true });
      writeFileSync(join(s.root, 'domains/big/manifest.json'), Buffer.alloc(4097, 0x20));
      await assert.rejects(s.transport.readFile('domains/big/manifest.json', 4096), (error: unknown) => {
        assert.ok(error instanceof IntegrityError, String(error));
        assert.match(error.message, /manifest\.json is larger than 4096 bytes/u);
        return true;
      });
      assert.equal((await s.transport.readFile('domains/big/manifest.json', 4097))?.length, 4097);
      const data = randomBytes(2 * 2 ** 20);
      const hash = sha256(data);
      const path = `domains/big/layers/${hash}.qcow2`;
      writeFileSync(join(s.root, path), Buffer.concat([data, Buffer.alloc(2 ** 20)]));
      const part = join(local, 'bigger.part');
      await assert.rejects(s.transport.getLayer(path, hash, data.length, part), (error: unknown) => {
        assert.ok(error instanceof IntegrityError, String(error));
        assert.match(error.message, new RegExp(`is ${data.length + 2 ** 20} bytes, but its manifest says ${data.length}; nothing was read`, 'u'));
        return true;
      });
      assert.equal(existsSync(part), false, 'nothing was written here');
    });

    it('says so when the NAS directory does not exist', async (t) => {
      const s = ready(t);
      if (!s) return;
      const gone = join(s.root, `missing ${ODD}`);
      const missing =
        s.transport instanceof DirTransport
          ? new DirTransport({ root: gone, opTimeoutMs: 5000, stallTimeoutMs: 5000 })
          : new SshTransport({ ...(s.transport as unknown as { options: ConstructorParameters<typeof SshTransport>[0] }).options, root: gone });
      await assert.rejects(missing.readFile('x', 1024), (error: unknown) => {
        assert.ok(error instanceof NasUnreachableError);
        assert.ok(error.message.includes(`${gone} does not exist`), error.message);
        return true;
      });
      await missing.close();
      assertNothingRan(s);
    });
  });
}

// A share is written by others too: a symbolic link or a FIFO planted there must not
// reach this host's own files, nor hang it.
describe('dir transport on a share others can write', () => {
  let base: string;
  let root: string;
  let host: string;
  let transport: DirTransport;
  before(() => {
    base = mkdtempSync(join(tmpdir(), 'kss-share-'));
    root = join(base, 'nas');
    host = join(base, 'host files');
    mkdirSync(root);
    mkdirSync(host);
    transport = new DirTransport({ root, opTimeoutMs: 5000, stallTimeoutMs: 5000 });
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  const refusesLink = (error: unknown) => {
    assert.ok(error instanceof IntegrityError, String(error));
    assert.match(error.message, /symbolic link; kvm-snapshot-sync follows none on a NAS share/u);
    return true;
  };
  const hostFile = (name: string, content: string) => {
    writeFileSync(join(host, name), content);
    return join(host, name);
  };

  it('follows no symbolic link in a path: a domain directory that points at this host is never read, written or emptied through', async () => {
    const data = randomBytes(2 ** 20);
    const hash = sha256(data);
    const kept = hostFile(`${hash}.qcow2`, 'a host file');
    mkdirSync(join(root, 'domains'), { recursive: true });
    symlinkSync(host, join(root, 'domains/linked'));
    const local = join(base, 'layer');
    writeFileSync(local, data);
    await assert.rejects(transport.readFile('domains/linked/manifest.json', 4096), refusesLink);
    await assert.rejects(transport.writeFileAtomic('domains/linked/manifest.json', Buffer.from('{}')), refusesLink);
    await assert.rejects(transport.list('domains/linked/layers'), refusesLink);
    await assert.rejects(transport.getLayer(`domains/linked/${hash}.qcow2`, hash, data.length, join(base, 'pulled.part')), refusesLink);
    await assert.rejects(transport.putLayer(local, hash, 'domains/linked/up.part', `domains/linked/${hash}.qcow2`), refusesLink);
    await assert.rejects(transport.remove(`domains/linked/${hash}.qcow2`), refusesLink);
    await assert.rejects(transport.rename(`domains/linked/${hash}.qcow2`, 'domains/moved'), refusesLink);
    assert.deepEqual(readdirSync(host), [`${hash}.qcow2`], 'nothing was made in the host directory');
    assert.equal(readFileSync(kept, 'utf8'), 'a host file');
  });

  it('opens no file through a link: a manifest, an upload or the clock file that points at a host file leaves it untouched', async () => {
    mkdirSync(join(root, 'domains/d/uploads'), { recursive: true });
    const secret = hostFile('secret', 'root only');
    symlinkSync(secret, join(root, 'domains/d/manifest.json'));
    await assert.rejects(transport.readFile('domains/d/manifest.json', 4096), refusesLink);

    const data = randomBytes(2 ** 20);
    const hash = sha256(data);
    const local = join(base, 'layer-2');
    writeFileSync(local, data);
    const victim = hostFile('victim', 'must stay');
    symlinkSync(victim, join(root, `domains/d/uploads/${hash}.h.part`));
    await assert.rejects(transport.putLayer(local, hash, `domains/d/uploads/${hash}.h.part`, `domains/d/layers/${hash}.qcow2`), refusesLink);
    assert.equal(readFileSync(victim, 'utf8'), 'must stay', 'an upload did not write through the link');

    // An upload hard-linked to a host file (a share on this host's own filesystem).
    const linked = hostFile('linked', 'must stay too');
    rmSync(join(root, `domains/d/uploads/${hash}.h.part`));
    linkSync(linked, join(root, `domains/d/uploads/${hash}.h.part`));
    await assert.rejects(transport.putLayer(local, hash, `domains/d/uploads/${hash}.h.part`, `domains/d/layers/${hash}.qcow2`), /has 2 hard links; kvm-snapshot-sync writes only files of its own/u);
    assert.equal(readFileSync(linked, 'utf8'), 'must stay too', 'an upload did not write through the hard link');

    // A held lock makes the next taker read the NAS clock by making a probe file: a new one, never a planted name.
    for (const name of ['.kss-clock', '.kss-clock-0']) symlinkSync(victim, join(root, name));
    assert.deepEqual(await transport.mkdirExclusive('domains/d/lock', 'owner.json', Buffer.from('{}')), { created: true });
    assert.equal((await transport.mkdirExclusive('domains/d/lock', 'owner.json', Buffer.from('{}'))).created, false);
    assert.equal(readFileSync(victim, 'utf8'), 'must stay', 'the clock probe did not truncate it');
    assert.deepEqual(readdirSync(root).filter((name) => name.startsWith('.kss-clock')).sort(), ['.kss-clock', '.kss-clock-0'], 'the probe is gone again');
  });

  it('works in the directory it checked, even when that directory is swapped for a link in between', async () => {
    // The walk holds each directory open: the name looked up later is looked up in the one it checked.
    mkdirSync(join(root, 'domains/swap/layers'), { recursive: true });
    const kept = hostFile('unpushed.qcow2', 'guest data');
    writeFileSync(join(root, 'domains/swap/layers/unpushed.qcow2'), 'old');
    const place = (await placeOf(root, root, 'domains/swap/layers/unpushed.qcow2', false)) as Place;
    try {
      renameSync(join(root, 'domains/swap/layers'), join(root, 'domains/swap/aside'));
      symlinkSync(host, join(root, 'domains/swap/layers'));
      rmSync(place.path);
    } finally {
      await place.close();
    }
    assert.equal(readFileSync(kept, 'utf8'), 'guest data', 'the host file behind the link is untouched');
    assert.equal(existsSync(join(root, 'domains/swap/aside/unpushed.qcow2')), false, 'the file removed is the one in the checked directory');
  });

  it('removes a tree by its own descriptors: links inside are removed, never what they point to, and names that are not UTF-8 too', async () => {
    mkdirSync(join(root, 'domains/tree/lock/deeper'), { recursive: true });
    const kept = hostFile('kept-by-the-host', 'host data');
    writeFileSync(join(root, 'domains/tree/lock/owner.json'), '{}');
    symlinkSync(host, join(root, 'domains/tree/lock/to-host-dir'));
    symlinkSync(kept, join(root, 'domains/tree/lock/deeper/to-host-file'));
    writeFileSync(Buffer.concat([Buffer.from(join(root, 'domains/tree/lock/deeper/')), Buffer.from([0x61, 0xff])]), 'a name that is not UTF-8');
    await transport.remove('domains/tree/lock');
    assert.equal(existsSync(join(root, 'domains/tree/lock')), false, 'the tree is gone');
    assert.equal(readFileSync(kept, 'utf8'), 'host data');
    assert.ok(readdirSync(host).includes('kept-by-the-host'), 'the host directory behind a link is untouched');
    await transport.remove('domains/tree/nothing-there');
  });

  it('reads only regular files: a FIFO for a manifest or a layer is refused at once', async () => {
    mkdirSync(join(root, 'domains/f/layers'), { recursive: true });
    execFileSync('mkfifo', [join(root, 'domains/f/manifest.json')]);
    const hash = 'c'.repeat(64);
    execFileSync('mkfifo', [join(root, `domains/f/layers/${hash}.qcow2`)]);
    const began = Date.now();
    const notRegular = (error: unknown) => {
      assert.ok(error instanceof IntegrityError, String(error));
      assert.match(error.message, /is not a regular file/u);
      return true;
    };
    await assert.rejects(transport.readFile('domains/f/manifest.json', 4096), notRegular);
    await assert.rejects(transport.getLayer(`domains/f/layers/${hash}.qcow2`, hash, 1000, join(base, 'fifo.part')), notRegular);
    assert.ok(Date.now() - began < 2000, `refused after ${Date.now() - began} ms (the deadline is 5000)`);
  });
});

// A NAS whose commands stop in the middle of a stream while its sshd, and so the link's
// keep-alives, go on answering: only the stall deadline can tell.
describe('ssh transport, a NAS that stops answering mid-stream', () => {
  const STALL_MS = 5000;
  /** Generous: this machine is shared and noisy; what matters is that it ends. */
  const MARGIN_MS = 10_000;
  const MiB = 2 ** 20;
  let nas: SshNas | undefined;
  let base: string;
  let root: string;
  let transport: SshTransport;
  before(async (t) => {
    if (!requireTools(t as unknown as TestContext, ...SSH_NAS_TOOLS)) return;
    base = mkdtempSync(join(tmpdir(), 'kss-stall-'));
    root = join(base, `nas ${ODD}`);
    nas = await startSshNas({ root });
    transport = new SshTransport({ root, target: nas.target, opTimeoutMs: 10_000, stallTimeoutMs: STALL_MS, compress: true });
  });
  after(async () => {
    await transport?.close();
    nas?.stop();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  /** Random (incompressible) bytes into a file, in pieces; their SHA-256. */
  function randomFile(path: string, size: number): string {
    const hash = createHash('sha256');
    writeFileSync(path, '');
    for (let done = 0; done < size; done += 8 * MiB) {
      const chunk = randomBytes(Math.min(8 * MiB, size - done));
      hash.update(chunk);
      writeFileSync(path, chunk, { flag: 'a' });
    }
    return hash.digest('hex');
  }

  /**
   * Runs a transfer; once `after` bytes are done, SIGSTOPs every NAS-side command (not
   * sshd). Resolves with how it ended, and how long after the stop; never hangs: on a
   * transport without a stall deadline it reports that it was still running.
   */
  async function stopMidStream(transfer: (onProgress: (done: number) => void) => Promise<unknown>, after: number) {
    const s = nas as SshNas;
    const stop = { at: 0, pids: [] as number[] };
    const onProgress = (done: number) => {
      if (stop.at !== 0 || done < after) return;
      stop.pids = s.commands();
      for (const pid of stop.pids) process.kill(pid, 'SIGSTOP');
      stop.at = Date.now();
    };
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([
      transfer(onProgress).then(
        () => 'it succeeded' as const,
        (error: unknown) => error,
      ),
      new Promise<'still running'>((resolve) => (timer = setTimeout(() => resolve('still running'), 60_000))),
    ]).finally(() => clearTimeout(timer));
    return { outcome, tookMs: Date.now() - stop.at, stop };
  }

  /** Waits (a little) until no NAS-side command is left, and says what is. */
  async function nasCommandsLeft(): Promise<number[]> {
    for (let i = 0; i < 30 && (nas as SshNas).commands().length > 0; i += 1) await new Promise((r) => setTimeout(r, 100));
    return (nas as SshNas).commands();
  }

  const cont = (pids: number[]) => {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGCONT');
      } catch {
        /* ended */
      }
    }
  };

  const assertStalled = (outcome: unknown, direction: 'pull' | 'push', hash: string, tookMs: number) => {
    assert.ok(outcome instanceof NasUnreachableError, `the transfer ended with: ${String(outcome)}`);
    assert.equal(outcome.exitCode, 8);
    assert.ok(outcome.message.includes(`the NAS (${transport.where})`), outcome.message);
    assert.ok(outcome.message.includes(`${direction === 'pull' ? 'sent' : 'took'} nothing for 5 s (stallSeconds)`), outcome.message);
    assert.ok(outcome.message.includes(`${direction === 'pull' ? 'pulling' : 'pushing'} layer ${hash}`), outcome.message);
    assert.match(outcome.remedy ?? '', /resumes/u);
    assert.ok(tookMs < STALL_MS + MARGIN_MS, `refused ${tookMs} ms after the NAS stopped`);
  };

  it('stops a small operation the NAS does not finish, and ends its NAS side', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    // A "small" file that takes seconds to read: its head runs long enough to be caught.
    execFileSync('truncate', ['-s', '1G', join(root, 'huge')]);
    const quick = new SshTransport({ root, target: s.target, opTimeoutMs: 3000, stallTimeoutMs: STALL_MS, compress: true, sftp: false });
    const stop = { at: 0, pids: [] as number[] };
    const catching = setInterval(() => {
      if (stop.at !== 0) return;
      const pids = s.commands();
      if (!pids.some((pid) => readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === 'head')) return;
      for (const pid of pids) process.kill(pid, 'SIGSTOP');
      Object.assign(stop, { at: Date.now(), pids });
    }, 20);
    let timer: NodeJS.Timeout | undefined;
    const began = Date.now();
    const outcome = await Promise.race([
      quick.readFile('huge', 2 ** 30).then(() => 'it succeeded', (error: unknown) => error),
      new Promise((resolve) => (timer = setTimeout(() => resolve('still running'), 60_000))),
    ]).finally(() => {
      clearTimeout(timer);
      clearInterval(catching);
    });
    const tookMs = Date.now() - began;
    try {
      assert.ok(stop.at > 0, 'the NAS-side head was stopped');
      assert.ok(outcome instanceof NasUnreachableError, String(outcome));
      assert.ok(outcome.message.includes(`did not answer within 3 s (${quick.where})`), outcome.message);
      assert.ok(tookMs < 3000 + MARGIN_MS, `refused ${tookMs} ms after it began`);
      t.diagnostic(`refused ${tookMs} ms after it began, ${Date.now() - stop.at} ms after the NAS stopped (deadline 3000 ms)`);
      assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side was ended');
    } finally {
      cont(stop.pids);
      await quick.close();
      rmSync(join(root, 'huge'));
    }
  });

  it('keeps an upload alive while the NAS flushes it slowly, and gives up on one that stays busy', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    const slow = join(base, 'slow bin');
    mkdirSync(slow, { recursive: true });
    // A NAS disk that takes its time: each sync waits first (an upload runs two).
    const slowSync = (seconds: number) => {
      writeFileSync(join(slow, 'sync'), `#!/bin/sh\nsleep ${seconds}\nexec /bin/sync "$@"\n`, { mode: 0o755 });
      s.setShellStartup(`export PATH=${shellQuote(slow)}:$PATH\n`);
    };
    try {
      // 2 × 4 s with nothing moving: past the 5 s stall deadline, within the busy limit
      // for 64 MiB (5 s + 8 s).
      slowSync(4);
      const file = join(base, 'flushed.qcow2');
      const hash = randomFile(file, 64 * MiB);
      const started = Date.now();
      const put = await transport.putLayer(file, hash, `domains/f/uploads/${hash}.h.part`, `domains/f/layers/${hash}.qcow2`);
      t.diagnostic(`published after ${Date.now() - started} ms, of which 8 s of flushing`);
      assert.equal(put.bytesMoved, 64 * MiB);
      assert.equal(createHash('sha256').update(readFileSync(join(root, `domains/f/layers/${hash}.qcow2`))).digest('hex'), hash);

      // A flush that does not end: given up at the busy limit for 8 MiB (5 s + 1 s).
      slowSync(600);
      const small = join(base, 'stuck.qcow2');
      const stuck = randomFile(small, 8 * MiB);
      const begun = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        transport.putLayer(small, stuck, `domains/f/uploads/${stuck}.h.part`, `domains/f/layers/${stuck}.qcow2`).then(() => 'it succeeded', (error: unknown) => error),
        new Promise((resolve) => (timer = setTimeout(() => resolve('still running'), 60_000))),
      ]).finally(() => clearTimeout(timer));
      const tookMs = Date.now() - begun;
      assert.ok(outcome instanceof NasUnreachableError, String(outcome));
      assert.ok(outcome.message.includes(`the NAS (${transport.where}) said it was busy but took no data for 6 s`), outcome.message);
      assert.ok(tookMs < 6000 + MARGIN_MS, `given up after ${tookMs} ms`);
      t.diagnostic(`a flush that does not end was given up after ${tookMs} ms (limit 6000 ms after the last byte)`);
      assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side (its sleeping sync too) was ended');
      assert.equal(existsSync(join(root, `domains/f/layers/${stuck}.qcow2`)), false, 'nothing was published');
    } finally {
      s.setShellStartup(undefined);
    }
  });

  it('bounds what a small command may print: a NAS account whose shell floods stdout is stopped, not buffered', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    writeFileSync(join(root, 'kss-nas.json'), '{"format": 1}\n');
    s.setShellStartup('head -c 64M /dev/zero\n');
    // Over SFTP no shell runs (the test above): the scripts are what a NAS without SFTP runs.
    const transport = new SshTransport({ root, target: s.target, opTimeoutMs: 10_000, stallTimeoutMs: STALL_MS, compress: true, sftp: false });
    try {
      await assert.rejects(transport.readFile('kss-nas.json', 4096), (error: unknown) => {
        assert.ok(error instanceof IntegrityError, String(error));
        assert.match(error.message, /answered a small command with more than 4097 bytes; it was stopped/u);
        return true;
      });
      await assert.rejects(transport.list('.'), /answered a small command with more than 16777216 bytes/u);
    } finally {
      s.setShellStartup(undefined);
    }
    assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side was ended');
    assert.ok(await transport.readFile('kss-nas.json', 4096), 'it answers again');
    await transport.close();
  });

  it('stops a small operation over SFTP that the NAS does not answer, and opens a new session for the next', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    writeFileSync(join(root, 'small'), 'small');
    const quick = new SshTransport({ root, target: s.target, opTimeoutMs: 3000, stallTimeoutMs: STALL_MS, compress: true });
    assert.equal((await quick.readFile('small', 64))?.toString(), 'small', 'the session is open');
    const stopped = s.sessions();
    for (const pid of stopped) process.kill(pid, 'SIGSTOP'); // sshd serves SFTP in-process: the NAS hangs
    const began = Date.now();
    try {
      await assert.rejects(quick.readFile('small', 64), (error: unknown) => {
        assert.ok(error instanceof NasUnreachableError, String(error));
        assert.ok(error.message.includes(`did not answer within 3 s (${quick.where})`), error.message);
        return true;
      });
      assert.ok(Date.now() - began < 3000 + MARGIN_MS, `refused ${Date.now() - began} ms after it began`);
    } finally {
      cont(stopped);
    }
    assert.equal((await quick.readFile('small', 64))?.toString(), 'small', 'it answers again');
    await quick.close();
    rmSync(join(root, 'small'));
  });

  it('cuts a download at the size the manifest names: a stream that decompresses to far more fills nothing here', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const s = nas as SshNas;
    const source = 'domains/z/layers/bomb.qcow2';
    mkdirSync(join(root, 'domains/z/layers'), { recursive: true });
    const size = 4 * MiB;
    const hash = randomFile(join(root, source), size);
    // Between the size check and the stream, the file grows by 1 GiB of zeros: a few
    // kilobytes compressed, 1 GiB once decompressed here.
    s.setShellStartup(`case "$BASH_EXECUTION_STRING" in *"tail -c"*) truncate -s +1G -- ${shellQuote(join(root, source))};; esac\n`);
    const part = join(base, 'bomb.part');
    let most = 0;
    try {
      const result = await transport.getLayer(source, hash, size, part, { onProgress: (done) => (most = Math.max(most, done)) });
      assert.equal(result.bytesMoved, size);
    } finally {
      s.setShellStartup(undefined);
    }
    assert.equal(statSync(join(root, source)).size, size + 1024 * MiB, 'the NAS did send more');
    assert.equal(statSync(part).size, size, 'exactly the layer was written here');
    assert.ok(most <= size, `progress never passed the size (${most})`);
    assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side ended');
  });

  it('stops a pull whose NAS sends nothing, ends the NAS side, and resumes it afterwards', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const source = `domains/p/layers/big.qcow2`;
    mkdirSync(join(root, 'domains/p/layers'), { recursive: true });
    const hash = randomFile(join(root, source), 192 * MiB);
    const part = join(base, 'pulled.part');
    const { outcome, tookMs, stop } = await stopMidStream((onProgress) => transport.getLayer(source, hash, 192 * MiB, part, { onProgress }), 32 * MiB);
    try {
      assert.ok(stop.pids.length > 0, 'NAS-side commands were stopped mid-stream');
      assertStalled(outcome, 'pull', hash, tookMs);
      t.diagnostic(`refused ${tookMs} ms after the NAS stopped sending (stall deadline ${STALL_MS} ms)`);
      assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side was ended');
    } finally {
      cont(stop.pids);
    }
    const kept = existsSync(part) ? statSync(part).size : 0;
    const again = await transport.getLayer(source, hash, 192 * MiB, part);
    assert.equal(again.resumedFrom, kept, 'it resumes from what it had');
    assert.ok(kept > 0 && kept < 192 * MiB, `kept ${kept} bytes`);
    assert.equal(createHash('sha256').update(readFileSync(part)).digest('hex'), hash, 'byte for byte');
  });

  it('stops a push whose NAS takes nothing, ends the NAS side, and resumes it afterwards', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const file = join(base, 'push.qcow2');
    const hash = randomFile(file, 192 * MiB);
    const part = `domains/q/uploads/${hash}.h.part`;
    const target = `domains/q/layers/${hash}.qcow2`;
    const { outcome, tookMs, stop } = await stopMidStream((onProgress) => transport.putLayer(file, hash, part, target, { onProgress }), 32 * MiB);
    try {
      assert.ok(stop.pids.length > 0, 'NAS-side commands were stopped mid-stream');
      assertStalled(outcome, 'push', hash, tookMs);
      t.diagnostic(`refused ${tookMs} ms after the NAS stopped taking data (stall deadline ${STALL_MS} ms)`);
      assert.deepEqual(await nasCommandsLeft(), [], 'the NAS side was ended');
    } finally {
      cont(stop.pids);
    }
    assert.equal(existsSync(join(root, target)), false, 'nothing was published');
    const again = await transport.putLayer(file, hash, part, target);
    assert.ok(again.resumedFrom > 0, `it resumes (from ${again.resumedFrom})`);
    assert.equal(again.bytesMoved, 192 * MiB - again.resumedFrom);
    assert.equal(createHash('sha256').update(readFileSync(join(root, target))).digest('hex'), hash, 'byte for byte');
  });
});

// ssh's refusals, told in its own words though it logs to a file (-E), and classified
// for the remedy.
describe('ssh transport, a connection refused', () => {
  let nas: SshNas | undefined;
  let base: string;
  before(async (t) => {
    if (!requireTools(t as unknown as TestContext, ...SSH_NAS_TOOLS)) return;
    base = mkdtempSync(join(tmpdir(), 'kss-refused-'));
    nas = await startSshNas({ shape: false });
  });
  after(() => {
    nas?.stop();
    if (base) rmSync(base, { recursive: true, force: true });
  });

  const refusal = async (t: TestContext, change: (target: SshNas['target']) => SshNas['target']) => {
    const transport = new SshTransport({ root: (nas as SshNas).root, target: change((nas as SshNas).target), opTimeoutMs: 10_000, stallTimeoutMs: 10_000, compress: true });
    try {
      const error = await transport.readFile('kss-nas.json', 4096).then(() => undefined, (e: unknown) => e);
      assert.ok(error instanceof NasUnreachableError, String(error));
      t.diagnostic(`${error.message} / ${error.remedy ?? ''}`);
      return error;
    } finally {
      await transport.close();
    }
  };

  it('an unknown host key', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const empty = join(base, 'no known hosts');
    writeFileSync(empty, '');
    const error = await refusal(t, (target) => ({ ...target, knownHosts: empty }));
    assert.match(error.message, /^cannot reach the NAS \(ssh .*\): Host key verification failed\.$/u);
    assert.ok(error.remedy?.includes(`ssh-keyscan -p ${(nas as SshNas).target.port} ${(nas as SshNas).target.host} >> ${shellQuote(empty)}`), error.remedy);
  });

  it('a key the NAS does not accept', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const other = join(base, 'other key');
    execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    const error = await refusal(t, (target) => ({ ...target, identity: other }));
    assert.match(error.message, /: root@.*: Permission denied \(publickey.*\)\.$/u);
    assert.match(error.remedy ?? '', /authorized_keys/u);
  });

  it('nothing listening', async (t) => {
    if (!nas && !requireTools(t, ...SSH_NAS_TOOLS)) return;
    const error = await refusal(t, (target) => ({ ...target, port: target.port + 1 }));
    assert.match(error.message, /: ssh: connect to host .* port \d+: Connection refused$/u);
    assert.match(error.remedy ?? '', /runs sshd/u);
  });
});
