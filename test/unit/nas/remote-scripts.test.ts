// The remote scripts, run by a real local sh on a temporary "NAS root": their quoting
// and behaviour, without SSH in between.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import * as scripts from '../../../lib/nas/remote-scripts.js';
import { parseEntries } from '../../../lib/nas/ssh-transport.js';

const base = mkdtempSync(join(tmpdir(), 'kss-scripts-'));
const root = join(base, `root 'q" $(touch pwned) é`);
mkdirSync(root);
after(() => rmSync(base, { recursive: true, force: true }));

function run(script: string, input?: Buffer) {
  return spawnSync('sh', ['-c', script], { input, cwd: base });
}

describe('remote scripts', () => {
  it('write, read, stat, list, rename and remove', () => {
    const path = `d/odd $(name) 'x'.json`;
    assert.equal(run(scripts.readFileScript(root, path, 64)).status, scripts.MISSING);
    assert.equal(run(scripts.writeFileScript(root, path, `${path}.tmp`), Buffer.from('data')).status, 0);
    assert.equal(readFileSync(join(root, path), 'utf8'), 'data');
    assert.equal(run(scripts.readFileScript(root, path, 64)).stdout.toString(), 'data');
    const [entry] = parseEntries(run(scripts.statScript(root, path)).stdout.toString());
    assert.equal(entry?.name, `odd $(name) 'x'.json`);
    assert.equal(entry?.size, 4);
    assert.equal(run(scripts.statScript(root, 'nothing')).status, scripts.MISSING);
    assert.deepEqual(parseEntries(run(scripts.listScript(root, 'd')).stdout.toString()).map((e) => e.name), [`odd $(name) 'x'.json`]);
    assert.equal(run(scripts.listScript(root, 'none')).status, 0);
    assert.equal(run(scripts.renameScript(root, path, 'd/new')).status, 0);
    assert.equal(run(scripts.renameScript(root, path, 'd/new')).status, scripts.MISSING);
    assert.equal(run(scripts.removeScript(root, 'd')).status, 0);
    assert.equal(existsSync(join(root, 'd')), false);
    assert.equal(existsSync(join(base, 'pwned')) || existsSync(join(root, 'pwned')), false);
  });

  it('exits NO_ROOT when the NAS root is missing, naming it without running it', () => {
    const gone = join(base, `gone $(touch pwned) 'q"`);
    const result = run(scripts.readFileScript(gone, 'x', 64));
    assert.equal(result.status, scripts.NO_ROOT);
    assert.equal(result.stderr.toString(), `the NAS directory ${gone} does not exist\n`);
    assert.equal(existsSync(join(base, 'pwned')), false);
  });

  it('receive an upload: verified, published read-only; short kept; mismatch removed', () => {
    const data = randomBytes(300_000);
    const hash = createHash('sha256').update(data).digest('hex');
    const prefix = `u/${hash}.h.part`;
    const target = `l/${hash}.qcow2`;
    const upload = (o: { claim?: string; token: string; offset: number; compressed: boolean }, input: Buffer) =>
      run(scripts.receiveUploadScript(root, { partPrefix: prefix, target, size: data.length, hash, claim: o.claim, token: o.token, offset: o.offset, compressed: o.compressed }), input);
    assert.equal(run(scripts.prepareUploadScript(root, prefix, target)).stdout.toString(), 'part 0 - zstd=1\n');
    // First half, then the sender stops.
    assert.equal(upload({ token: 'a', offset: 0, compressed: false }, data.subarray(0, 100_000)).stdout.toString().trim(), 'short 100000');
    assert.equal(run(scripts.prepareUploadScript(root, prefix, target)).stdout.toString(), `part 100000 ${prefix}.a zstd=1\n`);
    // The rest, compressed, from where it stopped.
    const rest = execFileSync('zstd', ['-1', '-c'], { input: data.subarray(100_000) });
    const done = upload({ claim: `${prefix}.a`, token: 'b', offset: 100_000, compressed: true }, rest);
    assert.equal(done.stdout.toString().trim(), 'published', done.stderr.toString());
    assert.ok(readFileSync(join(root, target)).equals(data));
    assert.equal(statSync(join(root, target)).mode & 0o777, 0o440, 'guest data is not world-readable on the NAS either');
    assert.deepEqual(readdirSync(join(root, 'u')), [], 'no partial upload is left');
    assert.equal(run(scripts.prepareUploadScript(root, prefix, target)).stdout.toString().trim(), 'published');

    const other = randomBytes(1000);
    const wrong = run(
      scripts.receiveUploadScript(root, { partPrefix: 'u/x.part', claim: undefined, token: 't', target: 'l/x.qcow2', offset: 0, size: 1000, hash: 'f'.repeat(64), compressed: false }),
      other,
    );
    assert.match(wrong.stdout.toString(), /^mismatch [0-9a-f]{64} 1000/);
    assert.equal(existsSync(join(root, 'u/x.part.t')) || existsSync(join(root, 'l/x.qcow2')), false);
  });

  it('keep a late, killed attempt from touching the file of the attempt that resumed it', async () => {
    const data = randomBytes(200_000);
    const hash = createHash('sha256').update(data).digest('hex');
    const prefix = `z/${hash}.h.part`;
    mkdirSync(join(root, 'z'), { recursive: true });
    mkdirSync(join(root, 'y'), { recursive: true }); // as prepareUploadScript leaves it
    const receive = (token: string, offset: number, claim?: string) =>
      scripts.receiveUploadScript(root, { partPrefix: prefix, claim, token, target: `y/${hash}`, offset, size: data.length, hash, compressed: false });
    // The old attempt is still running on the NAS (its client was killed; its stdin
    // has not reached its end yet) when the new one claims its file.
    const old = spawn('sh', ['-c', receive('old', 0)], { cwd: base, stdio: ['pipe', 'pipe', 'pipe'] });
    const oldOut: Buffer[] = [];
    old.stdout.on('data', (chunk: Buffer) => oldOut.push(chunk));
    old.stdin.write(data.subarray(0, 50_000));
    for (let waited = 0; (existsSync(join(root, `${prefix}.old`)) ? statSync(join(root, `${prefix}.old`)).size : 0) < 50_000; waited += 20) {
      assert.ok(waited < 10_000, 'the old attempt stored its first bytes');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const claimed = run(receive('new', 50_000, `${prefix}.old`), data.subarray(50_000, 150_000));
    assert.equal(claimed.stdout.toString().trim(), 'short 150000', claimed.stderr.toString());
    // The old attempt now finishes: its file's name is gone, so it reports nothing and
    // removes, cuts or publishes nothing.
    old.stdin.end();
    const status = await new Promise<number | null>((resolve) => old.on('close', resolve));
    assert.notEqual(status, 0, 'the late attempt fails');
    assert.equal(Buffer.concat(oldOut).toString(), '', 'and reports no outcome');
    assert.deepEqual(readdirSync(join(root, 'z')), [`${hash}.h.part.new`], 'only the new attempt\'s file is there');
    assert.ok(readFileSync(join(root, `${prefix}.new`)).equals(data.subarray(0, 150_000)), 'holding exactly what was sent to both');
    assert.equal(existsSync(join(root, `y/${hash}`)), false);
    // And the upload completes from there.
    const last = run(receive('last', 150_000, `${prefix}.new`), data.subarray(150_000));
    assert.equal(last.stdout.toString().trim(), 'published', last.stderr.toString());
    assert.ok(readFileSync(join(root, `y/${hash}`)).equals(data));
  });

  it('say they are alive while they read back a kept prefix and while they flush, not while data comes', async (t) => {
    const data = randomBytes(100_000);
    const hash = createHash('sha256').update(data).digest('hex');
    const prefix = `h/${hash}.h.part`;
    mkdirSync(join(root, 'h'), { recursive: true });
    mkdirSync(join(root, 'hl'), { recursive: true });
    writeFileSync(join(root, `${prefix}.old`), data.subarray(0, 30_000));
    const script = scripts.receiveUploadScript(root, { partPrefix: prefix, claim: `${prefix}.old`, token: 'b', target: `hl/${hash}`, offset: 30_000, size: data.length, hash, compressed: false });
    // Its own process group, so that whatever it leaves running can be ended.
    const child = spawn('sh', ['-c', script], { cwd: base, stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const notes: Array<{ at: number; line: string }> = [];
    let stdout = '';
    child.stderr.setEncoding('utf8').on('data', (text: string) => {
      for (const line of text.split('\n').filter((l) => l !== '')) notes.push({ at: Date.now(), line });
    });
    child.stdout.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));
    // A failed check must not leave the script waiting for input: the test file would never end.
    t.after(() => {
      if (child.exitCode === null && child.signalCode === null) process.kill(-(child.pid as number), 'SIGKILL');
    });
    const alive = () => notes.filter((n) => n.line === scripts.ALIVE_NOTE).length;
    for (let i = 0; i < 100 && alive() === 0; i += 1) await new Promise((r) => setTimeout(r, 20));
    assert.equal(alive(), 1, 'once while it reads back the 30000 bytes it kept');
    // The data phase: it waits for input, and says nothing (only moving bytes count).
    child.stdin.write(data.subarray(30_000, 60_000));
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(alive(), 1, 'nothing while it waits for data');
    const ended = Date.now();
    child.stdin.end(data.subarray(60_000));
    // A heartbeat left running would hold stderr, and so the SSH session, open.
    const late = setTimeout(() => process.kill(-(child.pid as number), 'SIGKILL'), 10_000);
    await closed;
    clearTimeout(late);
    assert.ok(Date.now() - ended < 10_000, 'it ended, closing its stderr');
    assert.equal(stdout, 'published\n');
    assert.ok(alive() >= 2, 'and again while it flushes and publishes');
    assert.ok(notes.filter((n) => n.line === scripts.ALIVE_NOTE).every((n, i) => i === 0 || n.at >= ended), 'the second one after the data ended');
    assert.deepEqual(notes.filter((n) => n.line !== scripts.ALIVE_NOTE), [], 'and nothing else on stderr');
    assert.ok(readFileSync(join(root, `hl/${hash}`)).equals(data));
  });

  it('send a download from an offset, compressed or not', () => {
    const data = randomBytes(50_000);
    mkdirSync(join(root, 's'), { recursive: true });
    writeFileSync(join(root, 's/f'), data);
    assert.match(run(scripts.prepareDownloadScript(root, 's/f')).stdout.toString(), /^size 50000 zstd=[01]\n$/);
    assert.ok(run(scripts.sendDownloadScript(root, 's/f', 1234, false)).stdout.equals(data.subarray(1234)));
    const compressed = run(scripts.sendDownloadScript(root, 's/f', 0, true)).stdout;
    assert.ok(execFileSync('zstd', ['-dc'], { input: compressed }).equals(data));
    assert.equal(run(scripts.sendDownloadScript(root, 's/none', 0, false)).status, scripts.MISSING);
  });

  it('create a directory exclusively', () => {
    assert.equal(run(scripts.mkdirExclusiveScript(root, 'k/lock', 'owner.json'), Buffer.from('me')).stdout.toString(), 'created\n');
    const again = run(scripts.mkdirExclusiveScript(root, 'k/lock', 'owner.json'), Buffer.from('you')).stdout.toString();
    assert.match(again, /^exists \d+\nme$/);
  });
});
