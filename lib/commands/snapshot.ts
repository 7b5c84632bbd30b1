// `kss snapshot list|create|delete|merge VM`. `list`: the generations of a domain, here
// and on the NAS, newest first, with the head, branches, snapshots and what is not
// pushed yet. A snapshot is a generation on the NAS given a name: retention keeps it
// (and what it reads through) until it is deleted; `kss rollback VM --to NAME` goes back.
import { readConfig } from '../config.js';
import { DiskStateError, NasUnreachableError, UsageError } from '../errors.js';
import { Logger, streamSink } from '../log.js';
import type { Generation } from '../nas/format.js';
import { openRepository } from '../nas/open.js';
import { boundChainDepth } from '../sync/disks.js';
import { readLocalState, writeLocalState } from '../sync/local-state.js';
import { requireNoEventSince, withDomainLock } from '../sync/session.js';
import { pushHere, shutOffSince, type CommandContext } from './lifecycle.js';
import { printJson, type Output } from './output.js';

export interface SnapshotRow {
  id: string;
  parent: string | null;
  host: string;
  created: string;
  where: 'local' | 'nas';
  marks: string[];
}

/** Lists generations; `remote` only the NAS's. */
export async function snapshotList(o: { domain: string; remote: boolean; json: boolean; configFile: string }, out: Output): Promise<void> {
  const config = await readConfig(o.configFile);
  const state = await readLocalState(config.stateDir, o.domain);
  const rows: SnapshotRow[] = [];
  if (!o.remote) {
    for (const { generation } of state.pending) rows.push(row(generation, 'local', ['not pushed']));
  }
  try {
    const repository = openRepository(config);
    const manifest = await repository.readManifest(o.domain).finally(() => repository.close());
    for (const generation of Object.values(manifest?.generations ?? {})) {
      const marks: string[] = [];
      if (generation.id === manifest?.head) marks.push('head');
      if (generation.id === state.synced?.id) marks.push('here');
      for (const [name, branch] of Object.entries(manifest?.branches ?? {})) if (branch.head === generation.id) marks.push(`branch ${name}`);
      for (const [name, snapshot] of Object.entries(manifest?.snapshots ?? {})) if (snapshot.generation === generation.id) marks.push(`snapshot ${name}`);
      rows.push(row(generation, 'nas', marks));
    }
  } catch (error) {
    if (!(error instanceof NasUnreachableError)) throw error;
    out.stderr.write(`kss: warning: the NAS cannot be reached; showing this host's generations only (${error.message})\n`);
  }
  rows.sort((a, b) => b.created.localeCompare(a.created));
  if (o.json) return printJson(out, rows);
  for (const r of rows) {
    out.stdout.write(`${r.id.slice(0, 12)}  ${r.created}  ${r.host.padEnd(12)} ${r.where.padEnd(5)} ${r.marks.join(', ')}\n`);
  }
}

function row(generation: Generation, where: 'local' | 'nas', marks: string[]): SnapshotRow {
  return { id: generation.id, parent: generation.parent, host: generation.host, created: generation.created, where, marks };
}

/**
 * `kss snapshot create VM [--name NAME]`: pushes what this host has (the VM shut off),
 * then names the generation its disks are on as a snapshot on the NAS.
 */
export async function snapshotCreate(o: { domain: string; name: string | undefined }, context: CommandContext): Promise<void> {
  const name = o.name ?? new Date().toISOString().slice(0, 19).replace(/:/gu, '');
  if (!/^[\w.-]{1,128}$/u.test(name)) throw new UsageError(`snapshot name "${name}": use letters, digits, . _ and - only, at most 128 of them`);
  const after = await shutOffSince(o.domain, context, `shut it down first (kss stop ${o.domain}): a snapshot is of the disks at rest`);
  const { outcome, pending, synced, config } = await pushHere(o.domain, context, after);
  if (pending > 0 || synced === null) {
    throw new DiskStateError(`a snapshot is kept on the NAS, and ${o.domain}'s disks here are not there yet: ${outcome}`, { remedy: `kss status ${o.domain} says why` });
  }
  const repository = openRepository(config);
  await repository.addSnapshot(o.domain, name, synced.id).finally(() => repository.close());
  context.stdout.write(`${o.domain}: snapshot ${name} = generation ${synced.id.slice(0, 12)}; back to it with kss rollback ${o.domain} --to ${name}\n`);
}

/** `kss snapshot delete VM NAME`: the name goes; the generation is then left to retention. */
export async function snapshotDelete(o: { domain: string; name: string }, context: CommandContext): Promise<void> {
  const repository = openRepository(await readConfig(context.configFile));
  await repository.removeSnapshot(o.domain, o.name).finally(() => repository.close());
  context.stdout.write(`${o.domain}: snapshot ${o.name} deleted; its generation stays until retention (kss gc) removes it\n`);
}

/**
 * `kss snapshot merge VM`: merges this host's chain of each disk as far as it safely
 * can: the newest layer the NAS has absorbs every layer below it but the base. Nothing
 * on the NAS changes; every generation stays restorable.
 */
export async function snapshotMerge(o: { domain: string }, context: CommandContext): Promise<void> {
  const after = await shutOffSince(o.domain, context, `shut it down first (kss stop ${o.domain})`);
  const config = await readConfig(context.configFile);
  const log = new Logger([streamSink(context.stderr, 'warn')]);
  const merged = await withDomainLock(config.stateDir, o.domain, log, 60_000, async () => {
    await requireNoEventSince(config.stateDir, o.domain, after);
    const state = await readLocalState(config.stateDir, o.domain);
    const disks = await boundChainDepth(state, 2);
    await writeLocalState(config.stateDir, state);
    return disks;
  });
  context.stdout.write(merged.length > 0 ? `${o.domain}: merged the chain of ${merged.join(', ')} here\n` : `${o.domain}: nothing to merge (the chains are as short as they can be without touching layers not on the NAS)\n`);
}
