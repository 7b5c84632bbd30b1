// Freezing a running VM's writes into layers, with libvirt's backup API (push mode):
// QEMU copies the clusters a dirty bitmap marks into a file we create, as they were at
// the instant the backup began, on every disk at once (crash-consistent across disks),
// and a new checkpoint (a new bitmap) starts marking from that same instant. The disk
// source is never changed: the guest keeps writing into its top, and a backup that
// fails or is killed leaves only a file to throw away. Why this and not an external
// snapshot: README, "Checkpoints while the VM runs".
//
// The session's first bitmap is made by the hook in prepare, on the fresh top before
// QEMU opens it (lib/qemu-img.ts addBitmapCommand), so that it marks every write from
// the first; libvirt is then told of it as a checkpoint (redefine). Checkpoint metadata
// is libvirt's, of this host only; these names are ours (CHECKPOINT_PREFIX).
//
// Not for the hook: every function here calls virsh.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ToolError } from '../errors.js';
import { runCommand, type Runner } from '../runner.js';
import { virshCommand } from '../virsh.js';

/** Our checkpoints' (and their bitmaps') names begin with this. */
export const CHECKPOINT_PREFIX = 'kss-';

/** One disk of the domain in a backup: `file` receives its frozen clusters; none: not backed up. */
export interface FreezeDisk {
  target: string;
  file?: string;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&'"]/gu, (c) => `&#${c.charCodeAt(0)};`);
}

/** The backup: what checkpoint `since` marks, per disk, into its file (which exists: reuse-external). Pure. */
export function backupXml(since: string, disks: readonly FreezeDisk[]): string {
  const entries = disks.map(({ target, file }) =>
    file === undefined
      ? `<disk name='${escapeXml(target)}' backup='no'/>`
      : `<disk name='${escapeXml(target)}' backup='yes' type='file' backupmode='incremental' incremental='${escapeXml(since)}'><target file='${escapeXml(file)}'/><driver type='qcow2'/></disk>`,
  );
  return `<domainbackup mode='push'><incremental>${escapeXml(since)}</incremental><disks>${entries.join('')}</disks></domainbackup>`;
}

/** A new checkpoint `name`, a bitmap of that name on each backed-up disk. Pure. */
export function checkpointXml(name: string, disks: readonly FreezeDisk[]): string {
  const entries = disks.map(({ target, file }) => `<disk name='${escapeXml(target)}' checkpoint='${file === undefined ? 'no' : 'bitmap'}'/>`);
  return `<domaincheckpoint><name>${escapeXml(name)}</name><disks>${entries.join('')}</disks></domaincheckpoint>`;
}

/** The checkpoint `name` for bitmaps of that name made before the start (prepare), to be redefined. Pure. */
export function redefineXml(name: string, createdSec: number, disks: readonly FreezeDisk[]): string {
  const entries = disks.map(({ target, file }) =>
    file === undefined ? `<disk name='${escapeXml(target)}' checkpoint='no'/>` : `<disk name='${escapeXml(target)}' checkpoint='bitmap' bitmap='${escapeXml(name)}'/>`,
  );
  return `<domaincheckpoint><name>${escapeXml(name)}</name><creationTime>${createdSec}</creationTime><disks>${entries.join('')}</disks></domaincheckpoint>`;
}

/** What `virsh domjobinfo` says, in its "Key: value" lines. Pure. */
export function parseJobInfo(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const match = /^([^:]+):\s*(.*?)\s*$/u.exec(line);
    if (match) fields[(match[1] as string).trim()] = match[2] as string;
  }
  return fields;
}

export interface LiveCheckpointOptions {
  uri: string;
  run?: Runner;
  /** Deadline of each virsh call. */
  callTimeoutMs?: number;
  /** A backup whose progress stands still this long is aborted. */
  stallMs?: number;
  pollMs?: number;
}

/** The checkpoints of one running domain, through virsh. */
export class LiveCheckpoints {
  private readonly run: Runner;
  private readonly callTimeoutMs: number;
  private readonly stallMs: number;
  private readonly pollMs: number;

  constructor(
    readonly domain: string,
    private readonly options: LiveCheckpointOptions,
  ) {
    this.run = options.run ?? runCommand;
    this.callTimeoutMs = options.callTimeoutMs ?? 30_000;
    this.stallMs = options.stallMs ?? 120_000;
    this.pollMs = options.pollMs ?? 200;
  }

  private async virsh(...args: string[]): Promise<string> {
    return (await this.run(virshCommand(this.options.uri, ...args), { timeoutMs: this.callTimeoutMs })).stdout;
  }

  /** Runs virsh with XML in a private temporary file. */
  private async withXml<T>(files: Record<string, string>, use: (paths: Record<string, string>) => Promise<T>): Promise<T> {
    const dir = await mkdtemp(join(tmpdir(), 'kss-checkpoint-'));
    try {
      const paths: Record<string, string> = {};
      for (const [name, xml] of Object.entries(files)) {
        paths[name] = join(dir, `${name}.xml`);
        await writeFile(paths[name], xml, { mode: 0o600 });
      }
      return await use(paths);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** Our checkpoints libvirt knows for the domain. */
  async list(): Promise<string[]> {
    const names = (await this.virsh('checkpoint-list', this.domain, '--name')).split('\n').map((line) => line.trim());
    return names.filter((name) => name.startsWith(CHECKPOINT_PREFIX));
  }

  /** Tells libvirt of the checkpoint whose bitmaps prepare made. */
  async redefine(name: string, createdSec: number, disks: readonly FreezeDisk[]): Promise<void> {
    await this.withXml({ checkpoint: redefineXml(name, createdSec, disks) }, ({ checkpoint }) => this.virsh('checkpoint-create', this.domain, checkpoint as string, '--redefine'));
  }

  /**
   * Freezes what checkpoint `since` marks into each disk's file, and starts checkpoint
   * `next`; returns when QEMU has written every file. Fails (after aborting the job) if
   * the job fails, the VM stops, or nothing moves for the stall deadline: the files are
   * then the caller's to remove, and `since` still marks everything since it.
   */
  async freeze(since: string, next: string, disks: readonly FreezeDisk[], onProgress?: (done: number, total: number) => void): Promise<void> {
    await this.withXml({ backup: backupXml(since, disks), checkpoint: checkpointXml(next, disks) }, ({ backup, checkpoint }) =>
      this.virsh('backup-begin', this.domain, backup as string, checkpoint as string, '--reuse-external'),
    );
    let seen = { progress: '', at: Date.now() };
    for (;;) {
      const job = parseJobInfo(await this.virsh('domjobinfo', this.domain));
      if (job['Job type'] === 'None') break;
      const progress = `${job['Data processed'] ?? job['File processed'] ?? ''}`;
      const total = parseSize(job['Data total'] ?? job['File total']);
      const done = parseSize(job['Data processed'] ?? job['File processed']);
      if (total !== undefined && done !== undefined) onProgress?.(done, total);
      if (progress !== seen.progress) seen = { progress, at: Date.now() };
      else if (Date.now() - seen.at > this.stallMs) {
        await this.virsh('domjobabort', this.domain).catch(() => undefined);
        throw new ToolError(`the checkpoint of ${this.domain} copied nothing for ${this.stallMs / 1000} s and was aborted`, 'virsh', undefined, '');
      }
      await new Promise((resolve) => setTimeout(resolve, this.pollMs));
    }
    const completed = parseJobInfo(await this.virsh('domjobinfo', this.domain, '--completed'));
    if (completed['Job type'] !== 'Completed' || completed.Operation !== 'Backup') {
      throw new ToolError(`the checkpoint of ${this.domain} did not complete (${completed['Job type'] ?? 'no job'}${completed['Error message'] ? `: ${completed['Error message']}` : ''})`, 'virsh', undefined, '');
    }
  }

  /** Removes a checkpoint (and, while the VM runs, its bitmaps); `metadataOnly` where they are gone already. */
  async drop(name: string, { metadataOnly = false }: { metadataOnly?: boolean } = {}): Promise<void> {
    await this.virsh('checkpoint-delete', this.domain, name, ...(metadataOnly ? ['--metadata'] : []));
  }
}

/** "8.000 MiB" as virsh prints sizes, in bytes. Pure. */
export function parseSize(text: string | undefined): number | undefined {
  const match = /^([\d.]+)\s*(B|KiB|MiB|GiB|TiB)$/u.exec(text ?? '');
  if (!match) return undefined;
  const scale = { B: 1, KiB: 2 ** 10, MiB: 2 ** 20, GiB: 2 ** 30, TiB: 2 ** 40 }[match[2] as 'B'];
  return Math.round(Number(match[1]) * scale);
}
