// The NAS repository on real transports: the manifest protocol (lock, compare-and-swap),
// interrupted and failing transfers, and retention.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcessByStdio } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, it, type TestContext } from 'node:test';
import { ConflictError, IntegrityError, LockedError, NasFullError, NasUnreachableError } from '../../lib/errors.js';
import { DirTransport } from '../../lib/nas/dir-transport.js';
import { NAS_FORMAT, generationId, nasPaths, type Manifest } from '../../lib/nas/format.js';
import { NasRepository } from '../../lib/nas/repository.js';
import { SshTransport } from '../../lib/nas/ssh-transport.js';
import { SSH_NAS_TOOLS, startSshNas, type SshNas } from '../helpers/ssh-nas.js';
import { randomQcow2 } from '../helpers/disks.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 2 ** 20;

async function randomFile(path: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  const out = createWriteStream(path);
  for (let done = 0; done < size; done += 4 * MiB) {
    const chunk = randomBytes(Math.min(4 * MiB, size - done));
    hash.update(chunk);
    if (!out.write(chunk)) await new Promise<void>((resolve) => out.once('drain', () => resolve()));
  }
  await new Promise<void>((resolve) => out.end(() => resolve()));
  return hash.digest('hex');
}

function dirRepository(root: string, host: string, options: Partial<ConstructorParameters<typeof NasRepository>[1]> = {}) {
  return new NasRepository(new DirTransport({ root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host, ...options });
}

let work: string;
before(() => {
  work = mkdtempSync(join(tmpdir(), 'kss-repo-'));
});
after(() => rmSync(work, { recursive: true, force: true }));

describe('manifest updates (directory NAS)', () => {
  it('publishes generations with a compare-and-swap on the head', async () => {
    const root = join(work, 'cas');
    mkdirSync(root);
    const desk = dirRepository(root, 'desk');
    const laptop = dirRepository(root, 'laptop');
    const layer = join(work, 'l1');
    const hash = await randomFile(layer, MiB);
    await desk.pushLayer('vm', layer, hash);
    const g1 = await desk.publishGeneration('vm', { parent: null, created: '2026-11-21T10:00:00.000Z', disks: { vda: hash }, layers: { [hash]: { parent: null, size: MiB } } });
    const manifest = (await laptop.readManifest('vm')) as Manifest;
    assert.equal(manifest.head, g1.id);
    assert.equal(manifest.revision, 1);
    assert.equal(JSON.parse(readFileSync(join(root, 'kss-nas.json'), 'utf8')).format, NAS_FORMAT);

    // A push made on an old head is refused, names who moved the head, and changes nothing.
    await assert.rejects(
      laptop.publishGeneration('vm', { parent: null, created: '2026-11-21T11:00:00.000Z', disks: { vda: hash }, layers: {} }),
      (error: unknown) => {
        assert.ok(error instanceof ConflictError);
        assert.match(error.message, new RegExp(`head is now generation ${g1.id.slice(0, 12)} from host desk`));
        assert.match(error.remedy ?? '', /kss resolve vm --keep local\|remote/);
        return true;
      },
    );
    assert.equal(((await desk.readManifest('vm')) as Manifest).revision, 1);
  });

  it('refuses a manifest naming a layer that was not pushed', async () => {
    const root = join(work, 'unpushed');
    mkdirSync(root);
    const desk = dirRepository(root, 'desk');
    const hash = 'a'.repeat(64);
    await assert.rejects(
      desk.publishGeneration('vm', { parent: null, created: '2026-11-21T10:00:00.000Z', disks: { vda: hash }, layers: { [hash]: { parent: null, size: 1 } } }),
      IntegrityError,
    );
    assert.equal(await desk.readManifest('vm'), undefined);
  });

  it('waits for a held lock, names its holder, and breaks a stale one', async () => {
    const root = join(work, 'locks');
    mkdirSync(root);
    const lockDir = join(root, nasPaths.lock('vm'));
    mkdirSync(lockDir, { recursive: true });
    writeFileSync(join(lockDir, 'owner.json'), JSON.stringify({ host: 'laptop', pid: 4242, token: 'abc', since: '2026-11-21T09:00:00.000Z' }));
    const desk = dirRepository(root, 'desk', { lockWaitMs: 600, lockStaleMs: 60_000 });
    await assert.rejects(desk.updateManifest('vm', (m) => m), (error: unknown) => {
      assert.ok(error instanceof LockedError);
      assert.match(error.message, /host laptop \(pid 4242\) since 2026-11-21T09:00:00.000Z/);
      return true;
    });
    // The holder died an hour ago.
    const hourAgo = new Date(Date.now() - 3600_000);
    utimesSync(join(lockDir, 'owner.json'), hourAgo, hourAgo);
    utimesSync(lockDir, hourAgo, hourAgo);
    const manifest = await desk.updateManifest('vm', (m) => m);
    assert.equal(manifest.revision, 1);
    assert.equal(existsSync(lockDir), false, 'and the lock is released after the update');
    assert.deepEqual(readdirSync(join(root, nasPaths.domainDir('vm'))).filter((n) => n.startsWith('lock')), []);
  });

  it('keeps what retention needs and removes the rest', async () => {
    const root = join(work, 'gc');
    mkdirSync(root);
    const now = new Date('2026-11-21T12:00:00.000Z');
    const desk = dirRepository(root, 'desk', { now: () => now });
    const day = (n: number) => new Date(now.getTime() - n * 86_400_000).toISOString();
    // base <- a <- b (head line, b the head); base <- x (a branch). A flat base2 made by
    // compaction lets the head line stop needing "base".
    const files: Record<string, string> = {};
    for (const name of ['base', 'a', 'b', 'x', 'orphan']) {
      files[name] = await randomFile(join(work, `gc-${name}`), 64 * 1024);
      await desk.pushLayer('vm', join(work, `gc-${name}`), files[name] as string);
    }
    const L = (name: string) => files[name] as string;
    let branchId = '';
    const g0 = await desk.publishGeneration('vm', { parent: null, created: day(90), disks: { vda: L('base') }, layers: { [L('base')]: { parent: null, size: 1 } } });
    const g1 = await desk.publishGeneration('vm', { parent: g0.id, created: day(60), disks: { vda: L('a') }, layers: { [L('a')]: { parent: L('base'), size: 1 } } });
    const g2 = await desk.publishGeneration('vm', { parent: g1.id, created: day(1), disks: { vda: L('b') }, layers: { [L('b')]: { parent: L('a'), size: 1 } } });
    await desk.updateManifest('vm', (m) => {
      m.layers[L('x')] = { parent: L('base'), size: 1 };
      const made = { parent: g0.id, host: 'laptop', created: day(40), disks: { vda: L('x') } };
      const id = generationId(made);
      branchId = id;
      m.generations[id] = { id, ...made };
      m.branches['conflict-1'] = { head: id, host: 'laptop', created: day(40), reason: 'kept remote' };
      return m;
    });
    // Files that are not ours, under names gc must not take for its own.
    const layersDir = join(root, nasPaths.layersDir('vm'));
    const uploadsDir = join(root, nasPaths.uploadsDir('vm'));
    mkdirSync(uploadsDir, { recursive: true });
    const foreign = [join(layersDir, 'README.txt'), join(layersDir, `${'e'.repeat(64)}.qcow2.bak`), join(uploadsDir, 'notes')];
    for (const path of foreign) writeFileSync(path, 'not a layer');
    mkdirSync(join(layersDir, `${'d'.repeat(64)}.qcow2`));
    writeFileSync(join(layersDir, `${'d'.repeat(64)}.qcow2`, 'inside'), 'kept');
    foreign.push(join(layersDir, `${'d'.repeat(64)}.qcow2`));
    // Files older than the grace period (and uploads older than theirs).
    const old = (path: string, days: number) => utimesSync(path, new Date(now.getTime() - days * 86_400_000), new Date(now.getTime() - days * 86_400_000));
    for (const name of Object.keys(files)) old(join(root, nasPaths.layer('vm', L(name))), 3);
    for (const path of foreign) old(path, 30);
    const manifestFile = join(root, nasPaths.manifest('vm'));
    const beforeDryRun = readFileSync(manifestFile);
    const layerFiles = readdirSync(layersDir).sort();
    const policy = { keepGenerations: 2, allDays: 30, dailyDays: 0, weeklyDays: 0, branchDays: 30 };
    const planned = await desk.collectGarbage('vm', policy, { dryRun: true });
    assert.ok(readFileSync(manifestFile).equals(beforeDryRun), 'a dry run leaves the manifest as it was');
    assert.deepEqual(readdirSync(layersDir).sort(), layerFiles, 'and every file');
    const result = await desk.collectGarbage('vm', policy);
    assert.deepEqual(planned, result, 'it said exactly what the real run then did');
    for (const path of foreign) assert.ok(existsSync(path), `gc left ${path}, whose name it does not make`);
    assert.deepEqual(result.droppedBranches, ['conflict-1']);
    assert.deepEqual(new Set(result.droppedGenerations), new Set([g0.id, branchId]));
    // g1 and g2 are kept (the two newest), and b's chain still runs through a and base.
    // The branch's layer leaves the manifest now, and its file stays a day: a host may be fetching it.
    assert.deepEqual(result.droppedLayers, [L('x')]);
    assert.deepEqual(result.removedLayers, [L('orphan')], 'only the file no manifest ever named, old enough, goes at once');
    const manifest = (await desk.readManifest('vm')) as Manifest;
    assert.deepEqual(new Set(Object.keys(manifest.generations)), new Set([g1.id, g2.id]));
    assert.deepEqual(Object.keys(manifest.dropped ?? {}), [L('x')]);
    for (const name of ['base', 'a', 'b', 'x']) assert.ok(existsSync(join(root, nasPaths.layer('vm', L(name)))), name);
    // A day later, the next pass removes it and forgets it.
    const later = dirRepository(root, 'desk', { now: () => new Date(now.getTime() + 25 * 3600_000) });
    const next = await later.collectGarbage('vm', policy);
    assert.deepEqual(next.removedLayers, [L('x')]);
    assert.equal(existsSync(join(root, nasPaths.layer('vm', L('x')))), false);
    assert.equal((await later.readManifest('vm'))?.dropped, undefined, 'and the dropped table is empty again');
    for (const name of ['base', 'a', 'b']) assert.ok(existsSync(join(root, nasPaths.layer('vm', L(name)))), name);
  });
});

describe('retention racing a push (directory NAS)', () => {
  const policy = { keepGenerations: 10, allDays: 7, dailyDays: 30, weeklyDays: 182, branchDays: 90 };
  it('leaves a file that another host names while retention removes old files (the removal is under the NAS lock, on the manifest as it is then)', async () => {
    const work = mkdtempSync(join(tmpdir(), 'kss-gc-race-'));
    try {
      const t0 = new Date('2026-11-01T10:00:00.000Z');
      const t2 = new Date(t0.getTime() + 2 * 86_400_000);
      let clock = t0;
      const repo = (host: string) => new NasRepository(new DirTransport({ root: work, opTimeoutMs: 10_000, stallTimeoutMs: 10_000 }), { host, now: () => clock });
      const desk = repo('desk');
      const laptop = repo('laptop');
      const file = (name: string) => {
        const data = randomBytes(4096);
        writeFileSync(join(work, name), data);
        return createHash('sha256').update(data).digest('hex');
      };
      const base = file('base');
      await desk.pushLayer('vm', join(work, 'base'), base);
      const g1 = await desk.publishGeneration('vm', { parent: null, created: t0.toISOString(), disks: { vda: base }, layers: { [base]: { parent: null, size: 4096 } } });
      // The laptop's push of l2 was cut after the upload, before the publish; it comes back two days later.
      const l2 = file('l2');
      await laptop.pushLayer('vm', join(work, 'l2'), l2);
      utimesSync(join(work, nasPaths.layer('vm', l2)), t0, t0);
      clock = t2;
      // The desk's upkeep: its retention CAS, then (while it lists and removes) the laptop finishes its push.
      const transport = desk.transport as DirTransport;
      const list = transport.list.bind(transport);
      transport.list = async (path: string) => {
        if (path === nasPaths.layersDir('vm')) {
          const pushed = await laptop.pushLayer('vm', join(work, 'l2'), l2);
          assert.equal(pushed.alreadyThere, true);
          await laptop.publishGeneration('vm', { parent: g1.id, created: t2.toISOString(), disks: { vda: l2 }, layers: { [l2]: { parent: base, size: 4096 } } });
        }
        return list(path);
      };
      await desk.collectGarbage('vm', policy);
      const manifest = (await laptop.readManifest('vm')) as Manifest;
      assert.equal(manifest.generations[manifest.head as string]?.disks.vda, l2, 'the NAS head names l2');
      assert.equal(existsSync(join(work, nasPaths.layer('vm', l2))), true, 'and l2 is still on the NAS');
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
});

describe('repository over SSH on a 1 Gbit link', () => {
  let nas: SshNas | undefined;
  const opened: SshTransport[] = [];
  const transport = (root?: string) => {
    const made = new SshTransport({ target: (nas as SshNas).target, root: root ?? (nas as SshNas).root, opTimeoutMs: 10_000, stallTimeoutMs: 10_000, compress: true });
    opened.push(made);
    return made;
  };
  before(async (t) => {
    if (requireTools(t as unknown as TestContext, ...SSH_NAS_TOOLS)) nas = await startSshNas();
  });
  after(async () => {
    for (const made of opened) await made.close();
    nas?.stop();
  });
  const ready = (t: TestContext) => (nas ? true : requireTools(t, ...SSH_NAS_TOOLS));

  it('lets exactly one of two concurrent pushes win; the other learns why', async (t) => {
    if (!ready(t)) return;
    const desk = new NasRepository(transport(), { host: 'desk' });
    const laptop = new NasRepository(transport(), { host: 'laptop' });
    const [a, b] = [join(work, 'race-a'), join(work, 'race-b')];
    const [ha, hb] = [await randomFile(a, 2 * MiB), await randomFile(b, 2 * MiB)];
    const results = await Promise.allSettled([
      desk.pushLayer('race', a, ha).then(() => desk.publishGeneration('race', { parent: null, created: new Date().toISOString(), disks: { vda: ha }, layers: { [ha]: { parent: null, size: 2 * MiB } } })),
      laptop.pushLayer('race', b, hb).then(() => laptop.publishGeneration('race', { parent: null, created: new Date().toISOString(), disks: { vda: hb }, layers: { [hb]: { parent: null, size: 2 * MiB } } })),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one wins');
    const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(lost.reason instanceof ConflictError, String(lost.reason));
    const winner = results.find((r) => r.status === 'fulfilled') as PromiseFulfilledResult<{ id: string; host: string }>;
    assert.match(lost.reason.message, new RegExp(`from host ${winner.value.host}`));
    assert.equal(((await desk.readManifest('race')) as Manifest).head, winner.value.id);
  });

  it('finishes a push killed with SIGKILL in the middle, from where it stopped', async (t) => {
    if (!ready(t)) return;
    const file = join(work, 'killed');
    const hash = await randomFile(file, 192 * MiB);
    const job = JSON.stringify({ target: (nas as SshNas).target, root: (nas as SshNas).root, domain: 'killed', file, hash });
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/push-layer.ts', job], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      await progressPast(child, 64 * MiB, 60_000);
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    const partial = readdirSync(join((nas as SshNas).root, nasPaths.uploadsDir('killed')));
    assert.equal(partial.length, 1, 'a partial upload is left');
    assert.ok(!existsSync(join((nas as SshNas).root, nasPaths.layer('killed', hash))), 'and nothing is published');

    const repository = new NasRepository(transport(), { host: 'desk' });
    const result = await repository.pushLayer('killed', file, hash);
    assert.ok(result.resumedFrom > 32 * MiB, `resumed from ${result.resumedFrom}`);
    assert.equal(result.bytesMoved, 192 * MiB - result.resumedFrom);
    assert.equal(execFileSync('sha256sum', [join((nas as SshNas).root, nasPaths.layer('killed', hash))], { encoding: 'utf8' }).split(' ')[0], hash);
  });

  /**
   * Waits until the push-layer fixture prints "progress N" with N past `bytes`. Fails
   * with what it saw if the fixture exits first or prints nothing past `bytes` within
   * `deadlineMs` (the caller kills it).
   */
  function progressPast(child: ChildProcessByStdio<null, Readable, null>, bytes: number, deadlineMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let last = 0;
      let rest = '';
      const finish = (error?: Error) => {
        clearTimeout(timer);
        child.stdout.off('data', onData);
        child.off('close', onClose);
        if (error) reject(error);
        else resolve();
      };
      const onData = (chunk: Buffer) => {
        const lines = (rest + chunk.toString()).split('\n');
        rest = lines.pop() as string;
        for (const line of lines) last = Number(/^progress (\d+)$/u.exec(line)?.[1] ?? last);
        if (last > bytes) finish();
      };
      const onClose = (code: number | null, signal: string | null) =>
        finish(new Error(`the push-layer fixture exited (${signal ?? `code ${code}`}) before it printed progress past ${bytes} bytes (last: ${last})`));
      const timer = setTimeout(
        () => finish(new Error(`the push-layer fixture printed no progress past ${bytes} bytes within ${deadlineMs / 1000} s (last: ${last}); killed it`)),
        deadlineMs,
      );
      child.stdout.on('data', onData);
      child.once('close', onClose);
    });
  }

  /** Waits until the files in `dir` have kept their sizes for a second. */
  async function settled(dir: string): Promise<void> {
    const sizes = () => readdirSync(dir).map((name) => `${name}:${statSync(join(dir, name)).size}`).join();
    for (let last = sizes(), stable = 0; stable < 2; ) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      const now = sizes();
      stable = now === last ? stable + 1 : 0;
      last = now;
    }
  }

  it('fails within its deadline when the link is cut, and resumes once it is back', async (t) => {
    if (!ready(t)) return;
    const file = join(work, 'cut');
    const hash = await randomFile(file, 192 * MiB);
    const repository = new NasRepository(transport(), { host: 'desk' });
    let cutAt = 0;
    const started = Date.now();
    await assert.rejects(
      repository.pushLayer('cut', file, hash, (done) => {
        if (cutAt === 0 && done > 48 * MiB) {
          cutAt = Date.now();
          (nas as SshNas).setLink(false);
        }
      }),
      (error: unknown) => {
        assert.ok(error instanceof NasUnreachableError, String(error));
        // ssh's own words for it, though the shared connection's master (in the
        // background, its stderr closed) is the one that noticed.
        const cause = /^cannot reach the NAS \(.*?\): (.*)$/u.exec(error.message)?.[1] ?? '';
        assert.match(cause, /not responding|timed out|No route to host|Connection reset|closed by remote host/u, error.message);
        t.diagnostic(`the failure: ${error.message}`);
        return true;
      },
    );
    const noticed = Date.now() - cutAt;
    (nas as SshNas).setLink(true);
    assert.ok(cutAt > started, 'the link was cut mid-transfer');
    assert.ok(noticed < 15_000, `the dead link was noticed after ${noticed} ms`);
    // Bytes the dead connection had buffered still reach the NAS once the link is back,
    // and its receiving end appends them. A resume that started now would see that late
    // append and (rightly) start over; a real retry comes later. Wait for it to settle.
    await settled(join((nas as SshNas).root, nasPaths.uploadsDir('cut')));
    const result = await repository.pushLayer('cut', file, hash);
    assert.ok(result.resumedFrom > 0, 'the upload resumed');
    assert.equal(execFileSync('sha256sum', [join((nas as SshNas).root, nasPaths.layer('cut', hash))], { encoding: 'utf8' }).split(' ')[0], hash);
  });

  it('pulls a layer byte for byte, and refuses a corrupted one leaving nothing local', async (t) => {
    if (!ready(t)) return;
    const repository = new NasRepository(transport(), { host: 'laptop' });
    const file = join(work, 'pull-src');
    const hash = randomQcow2(file, 8 * MiB);
    const info = { parent: null, size: statSync(file).size };
    await repository.pushLayer('pull', file, hash);
    const into = join(work, 'pulled layers');
    const { path } = await repository.pullLayer('pull', hash, info, into);
    assert.ok(readFileSync(path).equals(readFileSync(file)));

    const nasFile = join((nas as SshNas).root, nasPaths.layer('pull', hash));
    const bytes = readFileSync(nasFile);
    bytes[4096] = (bytes[4096] as number) ^ 1;
    rmSync(nasFile);
    writeFileSync(nasFile, bytes);
    const elsewhere = join(work, 'other layers');
    await assert.rejects(repository.pullLayer('pull', hash, info, elsewhere), IntegrityError);
    assert.deepEqual(readdirSync(elsewhere), [], 'no layer and no partial file');
  });

  it('fails cleanly on a full NAS, with nothing published', async (t) => {
    if (!ready(t)) return;
    const small = join(work, 'small-nas');
    mkdirSync(small);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'kss-small', small]);
    // Its own sshd, started after the mount: a mount made later does not reach the
    // mount namespace sshd runs in.
    const fullNas = await startSshNas({ root: small });
    const overSsh = new SshTransport({ target: fullNas.target, root: small, opTimeoutMs: 10_000, stallTimeoutMs: 10_000, compress: true });
    try {
      for (const [kind, repository] of [
        ['ssh', new NasRepository(overSsh, { host: 'desk' })],
        ['dir', dirRepository(small, 'desk')],
      ] as const) {
        const file = join(work, `big-${kind}`);
        const hash = await randomFile(file, 40 * MiB);
        await assert.rejects(repository.pushLayer('full', file, hash), (error: unknown) => {
          assert.ok(error instanceof NasFullError, `${kind}: ${String(error)}`);
          assert.match(error.message, /^the NAS is full: .* of 41943040 bytes of layer [0-9a-f]{64}; nothing was published$/);
          return true;
        });
        assert.equal(existsSync(join(small, nasPaths.layer('full', hash))), false, `${kind}: nothing published`);
        assert.deepEqual(readdirSync(join(small, nasPaths.uploadsDir('full'))), [], `${kind}: the partial upload is removed`);
        assert.equal(await repository.readManifest('full'), undefined);
      }
    } finally {
      await overSsh.close();
      fullNas.stop();
      execFileSync('umount', [small]);
    }
  });
});
