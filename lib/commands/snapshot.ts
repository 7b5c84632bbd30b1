// `kss snapshot list VM`: the generations of a domain, here and on the NAS, newest
// first, with the head, the kept branches and what is not pushed yet.
import { readConfig } from '../config.js';
import { NasUnreachableError } from '../errors.js';
import type { Generation } from '../nas/format.js';
import { openRepository } from '../nas/open.js';
import { readLocalState } from '../sync/local-state.js';
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
