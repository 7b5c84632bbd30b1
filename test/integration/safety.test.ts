// Nothing the guest wrote is lost, whatever comes in between: a start before the work of
// the last stop ran, a lost domain lock, kss disable after an interrupted seal, resolve
// and rollback while the VM is in use, a restore that failed, a damaged manifest, and
// SIGTERM. Two simulated hosts share a directory NAS; the hook is the built executable,
// called as libvirt calls it.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { LockedError } from '../../lib/errors.js';
import { acquireLock } from '../../lib/lock.js';
import { nasPaths } from '../../lib/nas/format.js';
import { openRepository } from '../../lib/nas/open.js';
import { runCommand, type Runner } from '../../lib/runner.js';
import { disableDomain } from '../../lib/sync/disable.js';
import { mergePending, sealDisks } from '../../lib/sync/disks.js';
import { domainLockPath, readLastEvent, readLocalState, setFlag, writeLocalState, type LocalState } from '../../lib/sync/local-state.js';
import { finishStop } from '../../lib/sync/stop.js';
import { MiB, createImage, qemuIo } from '../helpers/disks.js';
import { TestHost, managedDomainXml } from '../helpers/hosts.js';
import { twoHosts as twoHostsIn } from '../helpers/two-hosts.js';

let root: string;
before(() => {
  root = mkdtempSync(join(tmpdir(), 'kss-safety-'));
});
after(() => rmSync(root, { recursive: true, force: true }));

/** A two-disk domain on two hosts (test/helpers/two-hosts.ts), under this file's directory. */
const twoHosts = (t: TestContext, domain: string) => twoHostsIn(t, root, domain);

/** How many files the disk's chain has (the top and its layers). */
function chainLength(disk: string): number {
  return (JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', '-U', disk], { encoding: 'utf8' })) as unknown[]).length;
}

/** The pid of the background worker the last release end started (its log line). */
function lastWorker(host: TestHost, domain: string): number {
  const line = host.log(domain).split('\n').filter((l) => l.includes('finishing the stop in the background')).at(-1) ?? '';
  return Number((/worker=(\d+)/u.exec(line) as RegExpExecArray)[1]);
}

describe('the work after a stop', () => {
  it('leaves the tops alone when a start came before it ran: the VM runs on them again', async (t) => {
    const s = await twoHosts(t, 'late');
    if (!s) return;
    s.ok(s.desk, 'prepare');
    qemuIo(s.deskDisks.vda, 'write -P 0x21 1M 1M');
    // The stop's worker waits for the lock the test holds, and is then held still, so
    // that the next start surely comes first.
    const stateDir = (await s.desk.config()).stateDir;
    const release = await acquireLock(domainLockPath(stateDir, 'late'), { waitMs: 0 });
    s.ok(s.desk, 'release');
    const worker = lastWorker(s.desk, 'late');
    process.kill(worker, 'SIGSTOP');
    await release();
    s.ok(s.desk, 'prepare'); // seals the last session itself, and puts fresh tops on it
    qemuIo(s.deskDisks.vda, 'write -P 0x22 2M 1M'); // the guest runs and writes
    qemuIo(s.deskDisks.vdb, 'write -P 0x23 2M 1M');
    const running = s.digests(s.deskDisks);
    const depth = chainLength(s.deskDisks.vda);
    process.kill(worker, 'SIGCONT');
    for (const deadline = Date.now() + 30_000; ; ) {
      try {
        process.kill(worker, 0);
      } catch {
        break; // ended
      }
      assert.ok(Date.now() < deadline, 'the late worker ends');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.match(s.desk.log('late'), /not sealing: the domain moved on since this stop/u);
    assert.equal(chainLength(s.deskDisks.vda), depth, 'the running top was not sealed under the VM');
    assert.deepEqual(s.digests(s.deskDisks), running);
    assert.equal((await s.desk.state('late')).pending.length, 0, 'nothing was sealed by the late worker');
    await s.handOver(running);
  });

  it('stops at its next step when it lost the domain lock, and the next run finishes the work', async (t) => {
    const s = await twoHosts(t, 'lost');
    if (!s) return;
    s.ok(s.desk, 'prepare');
    qemuIo(s.deskDisks.vda, 'write -P 0x31 1M 1M');
    qemuIo(s.deskDisks.vdb, 'write -P 0x32 1M 1M');
    const expected = s.digests(s.deskDisks);
    const config = await s.desk.config();
    const lockDir = `${domainLockPath(config.stateDir, 'lost')}.lock`;
    // As after a laptop suspend: another process took the lock over as stale (here: it is
    // gone) while this one was in a long step; the lock's refresh notices within seconds.
    let slow = false;
    const run: Runner = async (command, options) => {
      if (slow) {
        slow = false;
        await new Promise((resolve) => setTimeout(resolve, 5000));
      }
      return runCommand(command, options);
    };
    const steps: string[] = [];
    const onStep = (step: string) => {
      steps.push(step);
      if (step === 'seal:hash' && existsSync(lockDir)) {
        rmSync(lockDir, { recursive: true });
        slow = true;
      }
    };
    const log = s.desk.quietLog();
    const after = (await readLastEvent(config.stateDir, 'lost'))?.id ?? null;
    const nasBefore = await s.manifest();
    await assert.rejects(finishStop('lost', { config, log, openRepository: () => openRepository(config, log), run, onStep }, after), (error: unknown) => {
      assert.ok(error instanceof LockedError, String(error));
      assert.match(error.message, /lost the lock .* stopped before the next step/u);
      return true;
    });
    assert.ok(!steps.includes('stop:push'), `it stopped before pushing (steps: ${steps.join(' ')})`);
    assert.deepEqual(await s.manifest(), nasBefore, 'nothing changed on the NAS');
    await s.handOver(expected);
    assert.deepEqual(s.digests(s.deskDisks), expected);
  });
});

describe('a seal that resumes', () => {
  it('takes only the layers the interrupted seal made, not a top that another step moved', async (t) => {
    const s = await twoHosts(t, 'moved');
    if (!s) return;
    const config = await s.desk.config();
    const save = (state: LocalState) => writeLocalState(config.stateDir, state);
    const engine = { run: runCommand };
    // Two sessions kept here, then a merge cut off after it moved vda's top onto the
    // merged layer (the state still names the two sessions' layers).
    for (const pattern of ['0x91', '0x92']) {
      qemuIo(s.deskDisks.vda, `write -P ${pattern} 1M 64k`);
      qemuIo(s.deskDisks.vdb, `write -P ${pattern} 1M 64k`);
      await sealDisks(await readLocalState(config.stateDir, 'moved'), 'desk', new Date(), { save, deps: engine });
    }
    let merges = 0;
    const cut = { run: runCommand, onStep: (step: string) => { if (step === 'merge:copy' && ++merges === 2) throw new Error('cut'); } };
    await assert.rejects(mergePending(await readLocalState(config.stateDir, 'moved'), 'desk', cut), /cut/u);
    // A session that wrote vdb only; its seal is cut after vdb was sealed, before the generation was recorded.
    qemuIo(s.deskDisks.vdb, 'write -P 0x93 2M 64k');
    const expected = s.digests(s.deskDisks);
    let saves = 0;
    const failing = async (state: LocalState) => {
      if (++saves === 2) throw new Error('power cut');
      await save(state);
    };
    await assert.rejects(sealDisks(await readLocalState(config.stateDir, 'moved'), 'desk', new Date(), { save: failing, deps: engine }), /power cut/u);
    const state = await readLocalState(config.stateDir, 'moved');
    const before = state.pending.at(-1)!.generation.disks;
    const sealed = await sealDisks(state, 'desk', new Date(), { save, deps: engine });
    assert.ok(sealed, 'the interrupted seal is finished');
    assert.equal(sealed.generation.disks.vda, before.vda, "vda's moved top is not taken for a seal of its own");
    assert.notEqual(sealed.generation.disks.vdb, before.vdb, "vdb's seal is taken");
    assert.deepEqual(s.digests(s.deskDisks), expected);
    s.ok(s.desk, 'prepare'); // merges, pushes, fresh tops
    assert.deepEqual(s.digests(s.deskDisks), expected);
    await s.handOver(expected);
  });
});

describe('kss disable', () => {
  it('after an interrupted seal makes every disk whole and standalone, skipping none', async (t) => {
    const s = await twoHosts(t, 'half');
    if (!s) return;
    s.ok(s.desk, 'prepare');
    qemuIo(s.deskDisks.vda, 'write -P 0x41 1M 1M');
    qemuIo(s.deskDisks.vdb, 'write -P 0x42 6M 1M');
    const expected = s.digests(s.deskDisks);
    // The stop's work is killed with the first disk sealed and the second one's top moved aside.
    const config = await s.desk.config();
    const job = JSON.stringify({ configFile: s.desk.configFile, domain: 'half', phase: 'stop', step: 'seal:rebase-header', occurrence: 2, mode: 'kill', disks: s.deskDisks });
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/lifecycle-until.ts', job], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(child.signal, 'SIGKILL', child.stderr);
    assert.ok(!existsSync(s.deskDisks.vdb), 'the second disk is in its layers directory only');
    rmSync(`${domainLockPath(config.stateDir, 'half')}.lock`, { recursive: true, force: true });

    const after = (await readLastEvent(config.stateDir, 'half'))?.id ?? null;
    const done = await disableDomain('half', { config, log: s.desk.quietLog(), openRepository: () => openRepository(config) }, after);
    assert.deepEqual(done.disks.sort(), ['vda', 'vdb'], 'no disk skipped');
    assert.equal(done.unpushed, 1, 'the interrupted session counts as not pushed');
    for (const disk of [s.deskDisks.vda, s.deskDisks.vdb]) assert.equal(chainLength(disk), 1, `${disk} is one standalone image`);
    assert.deepEqual(s.digests(s.deskDisks), expected, 'every byte of both disks, so the layers directories really are left over');
  });
  it('that was interrupted finishes when run again, and a start meanwhile is refused, changing nothing', async (t) => {
    const s = await twoHosts(t, 'undone');
    if (!s) return;
    await s.session(s.desk, (disks) => (qemuIo(disks.vda, 'write -P 0x43 1M 1M'), qemuIo(disks.vdb, 'write -P 0x44 1M 1M')));
    await s.session(s.desk, (disks) => (qemuIo(disks.vda, 'write -P 0x45 3M 1M'), qemuIo(disks.vdb, 'write -P 0x46 3M 1M')));
    const expected = s.digests(s.deskDisks);
    const config = await s.desk.config();
    // Killed with the first disk made standalone, the second not yet.
    const job = JSON.stringify({ configFile: s.desk.configFile, domain: 'undone', phase: 'disable', step: 'disable:flatten', occurrence: 2, mode: 'kill', disks: s.deskDisks });
    const child = spawnSync(process.execPath, ['--import', 'tsx', 'test/fixtures/lifecycle-until.ts', job], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(child.signal, 'SIGKILL', child.stderr);
    rmSync(`${domainLockPath(config.stateDir, 'undone')}.lock`, { recursive: true, force: true });
    assert.equal(chainLength(s.deskDisks.vda), 1);

    const refused = s.call(s.desk, 'prepare');
    assert.equal(refused.status, 5, refused.stderr);
    assert.match(refused.stderr, /disk vda \(.*\) is an image of its own, not a top on its layers: a kss disable did not finish.*\nTo fix: run kss disable again/su);
    assert.deepEqual(s.digests(s.deskDisks), expected, 'the refused start changed nothing');
    s.ok(s.desk, 'release'); // libvirt's release after the refused start
    const after = (await readLastEvent(config.stateDir, 'undone'))?.id ?? null;
    const done = await disableDomain('undone', { config, log: s.desk.quietLog(), openRepository: () => openRepository(config) }, after);
    assert.deepEqual(done.disks.sort(), ['vda', 'vdb']);
    for (const disk of [s.deskDisks.vda, s.deskDisks.vdb]) assert.equal(chainLength(disk), 1, `${disk} is one standalone image`);
    assert.deepEqual(s.digests(s.deskDisks), expected, 'every byte');
  });

  it('takes out a domain a disk was added to, with every byte of every disk (the remedy for that refusal)', async (t) => {
    const s = await twoHosts(t, 'added');
    if (!s) return;
    const vdc = s.desk.disk('added-extra.qcow2');
    createImage(vdc, 8 * MiB);
    const all = { ...s.deskDisks, vdc };
    const xml = managedDomainXml('added', all);
    assert.equal(s.desk.call('added', 'prepare', 'begin', xml).status, 0, 'the new disk is not synced, the start goes ahead');
    qemuIo(s.deskDisks.vda, 'write -P 0x47 1M 1M');
    qemuIo(vdc, 'write -P 0x48 1M 1M');
    const expected = s.digests(all);
    assert.equal(s.desk.call('added', 'release', 'end', xml).status, 0);
    await assert.rejects(s.desk.waitForStop('added'), /has no sealed layer and nothing to seal/u);
    const refused = s.desk.call('added', 'prepare', 'begin', xml);
    assert.equal(refused.status, 5, refused.stderr);
    assert.match(refused.stderr, /disk vdc \(.*\) has no sealed layer and nothing to seal\nTo fix: a disk was added to the domain: kss disable, then kss enable/su);
    assert.equal(s.desk.call('added', 'release', 'end', xml).status, 0);
    const config = await s.desk.config();
    const after = (await readLastEvent(config.stateDir, 'added'))?.id ?? null;
    const done = await disableDomain('added', { config, log: s.desk.quietLog(), openRepository: () => openRepository(config) }, after);
    assert.deepEqual(done.disks.sort(), ['vda', 'vdb', 'vdc']);
    assert.deepEqual(s.digests(all), expected, 'every byte of every disk, the unsealed writes included');
    for (const disk of Object.values(all)) assert.equal(chainLength(disk), 1, `${disk} is one standalone image`);
  });
});

describe('a start without the NAS', () => {
  it('records the disks its definition names, so that a disk added since is noticed at the stop', async (t) => {
    const s = await twoHosts(t, 'offside');
    if (!s) return;
    const vdc = s.desk.disk('offside-extra.qcow2');
    createImage(vdc, 8 * MiB);
    const xml = managedDomainXml('offside', { ...s.deskDisks, vdc });
    await setFlag((await s.desk.config()).stateDir, 'offside', 'skip-sync');
    assert.equal(s.desk.call('offside', 'prepare', 'begin', xml).status, 0);
    assert.deepEqual(Object.keys((await s.desk.state('offside')).disks).sort(), ['vda', 'vdb', 'vdc']);
    qemuIo(s.deskDisks.vda, 'write -P 0x49 1M 1M');
    assert.equal(s.desk.call('offside', 'release', 'end', xml).status, 0);
    await assert.rejects(s.desk.waitForStop('offside'), /disk vdc .* has no sealed layer and nothing to seal/u, 'not a generation that silently leaves vdc out');
  });
});

describe('kss resolve and kss rollback', () => {
  it('refuse while the VM runs or another host has it, changing nothing', async (t) => {
    const s = await twoHosts(t, 'busy');
    if (!s) return;
    const first = (await s.manifest()).head as string;
    await s.session(s.desk, (disks) => qemuIo(disks.vda, 'write -P 0x51 1M 1M'));
    const head = (await s.manifest()).head;
    const mine = s.digests(s.deskDisks);

    const running = s.desk.kssIn({ KSS_TEST_DOMSTATE: 'running' }, 'rollback', 'busy', '--to', first.slice(0, 12));
    assert.equal(running.status, 2, running.stderr);
    assert.match(running.stderr, /^kss: error: busy is running: its disks are in use\nTo fix: shut it down first/u);
    const resolving = s.desk.kssIn({ KSS_TEST_DOMSTATE: 'running' }, 'resolve', 'busy', '--keep', 'local');
    assert.equal(resolving.status, 2, resolving.stderr);
    assert.match(resolving.stderr, /busy is running: its disks are in use/u);

    s.ok(s.laptop, 'prepare'); // the laptop has it now
    const elsewhere = s.desk.kss('rollback', 'busy', '--to', first.slice(0, 12));
    assert.equal(elsewhere.status, 11, elsewhere.stderr);
    assert.match(elsewhere.stderr, /busy is in use on host laptop since .*\nTo fix: shut it down there first/u);
    assert.equal((await s.manifest()).head, head, 'the NAS head did not move');
    assert.deepEqual(s.digests(s.deskDisks), mine, 'nor did the disks here');
  });

  it('change the NAS head only once the disks here are in place: a rollback whose pull fails changes nothing', async (t) => {
    const s = await twoHosts(t, 'order');
    if (!s) return;
    // A conflict, resolved on the desktop for the laptop's side: the desktop's day becomes
    // a branch whose layer the laptop never had.
    s.ok(s.desk, 'prepare');
    qemuIo(s.deskDisks.vda, 'write -P 0x61 1M 1M');
    await setFlag((await s.desk.config()).stateDir, 'order', 'no-push');
    s.ok(s.desk, 'release');
    await s.desk.waitForStop('order');
    const deskDay = s.digests(s.deskDisks);
    await setFlag((await s.laptop.config()).stateDir, 'order', 'steal-lease');
    await s.session(s.laptop, (disks) => qemuIo(disks.vdb, 'write -P 0x62 1M 1M'));
    const resolved = s.desk.kss('resolve', 'order', '--keep', 'remote');
    assert.equal(resolved.status, 0, resolved.stderr);
    const branch = (/the other side is branch (\S+)/u.exec(resolved.stdout) as RegExpExecArray)[1] as string;
    const before = await s.manifest();
    const branchLayer = before.generations[before.branches[branch]?.head as string]?.disks.vda as string;
    const laptopHas = s.digests(s.laptopDisks);

    // That layer is damaged on the NAS: the laptop's rollback to the branch cannot pull it.
    const onNas = join(s.nas, nasPaths.layer('order', branchLayer));
    renameSync(onNas, `${onNas}.good`);
    writeFileSync(onNas, readFileSync(`${onNas}.good`).subarray(0, 4096));
    const refused = s.laptop.kss('rollback', 'order', '--to', branch);
    assert.equal(refused.status, 6, refused.stderr);
    assert.equal((await s.manifest()).head, before.head, 'the NAS head did not move');
    assert.equal((await s.manifest()).revision, before.revision, 'nothing on the NAS changed');
    assert.deepEqual(s.digests(s.laptopDisks), laptopHas, 'the laptop disks are as they were');

    renameSync(`${onNas}.good`, onNas);
    const back = s.laptop.kss('rollback', 'order', '--to', branch);
    assert.equal(back.status, 0, back.stderr);
    assert.deepEqual(s.digests(s.laptopDisks), deskDay, "with the layer whole, the laptop rolls back to the desktop's day");
    assert.notEqual((await s.manifest()).head, before.head, 'as the new head');
  });
});

describe('a restore that did not happen', () => {
  it('leaves no flag that lets a later ordinary start skip the NAS', async (t) => {
    const s = await twoHosts(t, 'restore');
    if (!s) return;
    s.ok(s.desk, 'prepare'); // the desktop has the VM
    // On the laptop a restore began (no managed-save image is there: it failed, or never was).
    s.ok(s.laptop, 'restore');
    const refused = s.call(s.laptop, 'prepare');
    assert.equal(refused.status, 11, `the lease is checked as for any start: ${refused.stderr}`);
    assert.match(refused.stderr, /restore is in use on host desk/u);
    qemuIo(s.deskDisks.vda, 'write -P 0x71 1M 1M');
    s.ok(s.desk, 'release');
    await s.desk.waitForStop('restore');
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks), 'and the next start syncs');
  });
});

describe('bounded work', () => {
  it('kss gc refuses a manifest whose head is its own parent, with a time of "junk", at once', async (t) => {
    const s = await twoHosts(t, 'loop');
    if (!s) return;
    const manifest = await s.manifest();
    const head = manifest.generations[manifest.head as string]!;
    // Anything that can write the NAS can write this: the head is its own parent.
    manifest.generations[head.id] = { ...head, parent: head.id, created: 'junk' };
    writeFileSync(join(s.nas, nasPaths.manifest('loop')), JSON.stringify(manifest));
    const started = Date.now();
    const gc = spawnSync(join(s.desk.dir, 'kss'), ['gc', 'loop'], { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL', env: { PATH: '/usr/bin:/bin', KSS_CONFIG: s.desk.configFile } });
    assert.equal(gc.signal, null, `it ended by itself (after ${Date.now() - started} ms)`);
    assert.equal(gc.status, 6, gc.stderr);
    assert.match(gc.stderr, /^kss: error: \S+manifest\.json: generation [0-9a-f]{64}: bad host or time\nTo fix: the manifest on the NAS is damaged/u);
  });

  it('SIGTERM ends a hook blocked on the NAS within seconds, giving its lock back', async (t) => {
    const s = await twoHosts(t, 'term');
    if (!s) return;
    await s.session(s.desk, (disks) => qemuIo(disks.vda, 'write -P 0x81 1M 1M'));
    // The NAS lock is held by a live holder (its owner file stays fresh): the laptop's start waits for it.
    const nasLock = join(s.nas, nasPaths.lock('term'));
    mkdirSync(nasLock);
    writeFileSync(join(nasLock, 'owner.json'), JSON.stringify({ host: 'desk', pid: 1, token: 'held', since: new Date().toISOString() }));
    const laptopConfig = await s.laptop.config();
    const hook = spawn(join(s.laptop.dir, 'hooks', 'qemu'), ['term', 'prepare', 'begin', '-'], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { LC_ALL: 'C', PATH: '/usr/bin:/bin', KSS_CONFIG: s.laptop.configFile },
    });
    hook.stdin.end(managedDomainXml('term', s.laptopDisks));
    const ended = new Promise<{ code: number | null; signal: string | null }>((resolve) => hook.on('exit', (code, signal) => resolve({ code, signal })));
    for (const deadline = Date.now() + 30_000; !/waiting for the NAS lock/u.test(s.laptop.log('term')); ) {
      assert.ok(Date.now() < deadline, `the laptop's start reached the NAS lock:\n${s.laptop.log('term')}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
    const lockDir = `${domainLockPath(laptopConfig.stateDir, 'term')}.lock`;
    assert.ok(existsSync(lockDir), 'it holds the domain lock');
    const sent = Date.now();
    hook.kill('SIGTERM');
    const end = await Promise.race([ended, new Promise<undefined>((resolve) => setTimeout(resolve, 10_000, undefined))]);
    if (end === undefined) hook.kill('SIGKILL');
    assert.ok(end, 'it ended within 10 s of SIGTERM');
    assert.ok(Date.now() - sent < 10_000);
    assert.ok(!existsSync(lockDir), 'and gave the domain lock back');

    rmSync(nasLock, { recursive: true });
    s.ok(s.laptop, 'prepare');
    assert.deepEqual(s.digests(s.laptopDisks), s.digests(s.deskDisks));
  });
});
