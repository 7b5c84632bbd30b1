// QEMU's own incremental backup, run on images no VM has open: qemu-storage-daemon
// (QEMU's block layer without a guest) copies the clusters a persistent dirty bitmap
// marks from one image into another. The stop work uses it to cut what the guest wrote
// since the last checkpoint out of the session's top (lib/checkpoint/remainder.ts):
// the very code a running VM's backup uses, not a reimplementation of qcow2.
//
// Spoken over QMP on the daemon's stdin and stdout. Every wait has an end: the copy is
// stopped when it moves nothing for STALL_MS, each answer is awaited for ANSWER_MS.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { isAbsolute } from 'node:path';
import { ToolError } from '../errors.js';

const DAEMON = 'qemu-storage-daemon';
/** A command's answer arrives at once; a daemon that says nothing for this long is stuck. */
const ANSWER_MS = 30_000;
/** The copy is stopped when its progress stands still for this long. */
const STALL_MS = 120_000;
const POLL_MS = 200;

export interface OfflineBackup {
  /** The image read (its own chain is opened read-only as well). */
  source: string;
  /** The persistent bitmap of `source` whose clusters are copied; `source` is left as it is. */
  bitmap: string;
  /** An existing qcow2 image the clusters are written into (its backing chain is only read). */
  target: string;
}

type QmpMessage = { return?: unknown; error?: { class: string; desc: string }; event?: string; data?: Record<string, unknown>; QMP?: unknown };

interface JobInfo {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** Copies the clusters `bitmap` marks from `source` into `target`; returns the bytes copied. */
export async function copyBitmapClusters({ source, bitmap, target }: OfflineBackup): Promise<number> {
  for (const path of [source, target]) if (!isAbsolute(path)) throw new Error(`internal: ${DAEMON} path must be absolute, got "${path}"`);
  // As JSON: a file name holding a comma is taken whole, not as more options.
  const node = (name: string, options: Record<string, unknown>) => ['--blockdev', JSON.stringify({ 'node-name': name, ...options })];
  const args = [
    '--chardev', 'stdio,id=monitor',
    '--monitor', 'chardev=monitor',
    ...node('source', { driver: 'qcow2', 'read-only': true, file: { driver: 'file', filename: source, 'read-only': true } }),
    ...node('target', { driver: 'qcow2', file: { driver: 'file', filename: target } }),
  ];
  const child = spawn(DAEMON, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { LC_ALL: 'C', PATH: process.env.PATH ?? '/usr/bin:/bin' } });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString('utf8')).slice(-4096)));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const spawned = new Promise<void>((resolve, reject) => {
    child.on('spawn', resolve);
    child.on('error', (error: NodeJS.ErrnoException) =>
      reject(error.code === 'ENOENT' ? new ToolError(`${DAEMON} is not installed`, DAEMON, undefined, '', { remedy: 'apt-get install qemu-system-common' }) : error),
    );
  });
  const fail = (what: string) => new ToolError(`${DAEMON} ${what} (copying bitmap ${bitmap} of ${source} into ${target})`, DAEMON, child.exitCode ?? undefined, stderr);

  const waiting: Array<(message: QmpMessage) => void> = [];
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (line) => {
    let message: QmpMessage;
    try {
      message = JSON.parse(line) as QmpMessage;
    } catch {
      return; // not QMP: nothing we asked for
    }
    if (message.event !== undefined) return; // progress is polled; events are not needed
    waiting.shift()?.(message);
  });
  const next = () =>
    new Promise<QmpMessage>((resolve, reject) => {
      const timer = setTimeout(() => reject(fail(`did not answer within ${ANSWER_MS / 1000} s`)), ANSWER_MS);
      waiting.push((message) => {
        clearTimeout(timer);
        resolve(message);
      });
      void exited.then(() => reject(fail('ended unexpectedly')));
    });
  const execute = async (command: string, args?: Record<string, unknown>) => {
    const answer = next();
    child.stdin.write(`${JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}) })}\n`);
    const message = await answer;
    if (message.error) throw fail(`refused ${command}: ${message.error.desc}`);
    return message.return;
  };

  try {
    await spawned;
    await next(); // the greeting
    await execute('qmp_capabilities');
    // bitmap-mode never: the source stays as it is (it is opened read-only anyway).
    await execute('blockdev-backup', { 'job-id': 'copy', device: 'source', target: 'target', sync: 'bitmap', bitmap, 'bitmap-mode': 'never', 'auto-dismiss': false });
    let seen = { progress: -1, at: Date.now() };
    for (;;) {
      const job = ((await execute('query-jobs')) as JobInfo[]).find((entry) => entry.id === 'copy');
      if (job === undefined) throw fail('lost its copy job');
      if (job.status === 'concluded') {
        if (job.error !== undefined) throw fail(`failed to copy: ${job.error}`);
        await execute('job-dismiss', { id: 'copy' });
        // Closing the target writes its metadata out; quit does that before it exits.
        await execute('quit');
        const code = await exited;
        if (code !== 0) throw fail(`exited with status ${String(code)}`);
        return job['current-progress'];
      }
      if (job['current-progress'] > seen.progress) seen = { progress: job['current-progress'], at: Date.now() };
      else if (Date.now() - seen.at > STALL_MS) throw fail(`copied nothing for ${STALL_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
  }
}
