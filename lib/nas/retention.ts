// Which generations, branches and layer files to keep on the NAS. Pure.
//
// Kept generations, along the head's history and along each kept branch's:
//   - the nearest `keepGenerations`, whatever their age;
//   - every generation younger than `allDays`;
//   - the newest of each day (UTC) younger than `dailyDays`;
//   - the newest of each week (Monday to Sunday, UTC) younger than `weeklyDays`.
// A branch (the losing side of a conflict) is kept `branchDays`; a snapshot's
// generation until the snapshot is deleted; the generation each host was last in step
// with (manifest `hosts`) `branchDays` after that, since its unpushed work stands on it.
//
// Kept files: a kept generation must stay readable, so every disk's chain of it is
// kept in full. The head's in the fewest files (lib/nas/chains.ts canonicalChain: the
// chain a start reads); each other generation, newest first, by the fewest bytes added
// to what is kept already (cheapestChain down to a layer kept files provide): an old
// generation keeps its own small layers rather than a merged layer as large as the disk.
// And what each host whose last place is kept would fetch to come back to the head (a
// catch-up layer made for it: lib/sync/nas-upkeep.ts). Every other file leaves the
// manifest, and is removed after a grace period (repository.ts collectGarbage).
import { canonicalChain, cheapestChain, readsAs } from './chains.js';
import { ancestry, type Generation, type Manifest } from './format.js';

export interface RetentionPolicy {
  keepGenerations: number;
  allDays: number;
  dailyDays: number;
  weeklyDays: number;
  branchDays: number;
}

export interface RetentionPlan {
  keepGenerations: Set<string>;
  dropGenerations: string[];
  dropBranches: string[];
  /** Layer files kept. */
  neededLayers: Set<string>;
  /** Listed layer files that leave the manifest. */
  dropLayers: string[];
}

/** How far ahead of this host's clock a host's mark may be and still count (clocks differ a little). */
const CLOCK_SKEW_MS = 86_400_000;

/** The most host places retention keeps and catch-up layers are made for. */
export const MAX_PLACES = 4;

/**
 * The listed generations the other hosts were last in step with (manifest `hosts`),
 * newest mark first: only marks younger than `days` and not from the future (a mark
 * from the future would keep its generation for ever), at most MAX_PLACES.
 */
export function hostPlaces(manifest: Manifest, now: Date, days: number, except?: string): Array<{ host: string; generation: Generation }> {
  return Object.entries(manifest.hosts ?? {})
    .filter(([host, mark]) => host !== except && Object.hasOwn(manifest.generations, mark.generation))
    .map(([host, mark]) => ({ host, at: Date.parse(mark.at), generation: manifest.generations[mark.generation] as Generation }))
    .filter(({ at }) => at <= now.getTime() + CLOCK_SKEW_MS && now.getTime() - at < days * DAY_MS)
    .sort((a, b) => b.at - a.at)
    .slice(0, MAX_PLACES)
    .map(({ host, generation }) => ({ host, generation }));
}

/** The policy a configuration sets (lib/config.ts). */
export function retentionPolicy(config: { retentionGenerations: number; retentionDays: number; retentionDailyDays: number; retentionWeeklyDays: number; retentionBranchDays: number }): RetentionPolicy {
  return {
    keepGenerations: config.retentionGenerations,
    allDays: config.retentionDays,
    dailyDays: config.retentionDailyDays,
    weeklyDays: config.retentionWeeklyDays,
    branchDays: config.retentionBranchDays,
  };
}

const DAY_MS = 86_400_000;

/** Decides what retention keeps of a manifest at time `now`. */
export function planRetention(manifest: Manifest, now: Date, policy: RetentionPolicy): RetentionPlan {
  const keep = new Set<string>();
  const order: string[] = []; // kept generations, the head's first, each line newest first
  const keepOne = (id: string) => {
    if (!keep.has(id)) order.push(id);
    keep.add(id);
  };
  const keepLine = (head: string) => {
    const days = new Set<number>();
    const weeks = new Set<number>();
    for (const [index, generation] of ancestry(manifest.generations, head).entries()) {
      const age = (now.getTime() - Date.parse(generation.created)) / DAY_MS;
      const day = Math.floor(Date.parse(generation.created) / DAY_MS);
      const week = Math.floor((day + 3) / 7); // day 0 (1970-01-01) was a Thursday
      const newestOfDay = !days.has(day);
      const newestOfWeek = !weeks.has(week);
      days.add(day);
      weeks.add(week);
      if (index < policy.keepGenerations || age < policy.allDays || (newestOfDay && age < policy.dailyDays) || (newestOfWeek && age < policy.weeklyDays)) {
        keepOne(generation.id);
      }
    }
  };
  if (manifest.head !== null) keepLine(manifest.head);
  const dropBranches: string[] = [];
  for (const [name, branch] of Object.entries(manifest.branches)) {
    if ((now.getTime() - Date.parse(branch.created)) / DAY_MS >= policy.branchDays) dropBranches.push(name);
    else keepLine(branch.head);
  }
  for (const snapshot of Object.values(manifest.snapshots ?? {})) keepOne(snapshot.generation);
  // Where each host last was in step: its unpushed work stands on it (a conflict keeps it as a branch).
  const places = hostPlaces(manifest, now, policy.branchDays);
  for (const { generation } of places) keepOne(generation.id);

  const needed = new Set<string>();
  const provided = new Set<string>();
  const keepFiles = (files: string[]) => {
    for (const file of files) {
      needed.add(file);
      provided.add(readsAs(manifest.layers, file));
    }
  };
  for (const [i, id] of order.entries()) {
    for (const layer of Object.values((manifest.generations[id] as Generation).disks)) {
      keepFiles(i === 0 && id === manifest.head ? canonicalChain(manifest.layers, layer).map((step) => step.file) : keptChain(manifest, layer, (name) => provided.has(name)));
    }
  }
  // What each other host would fetch to come back to the head: a catch-up layer made for it, or the layers.
  const head = manifest.head === null ? undefined : manifest.generations[manifest.head];
  for (const { generation: place } of places) {
    if (!head) continue;
    for (const [target, layer] of Object.entries(head.disks)) {
      const theirs = place.disks[target];
      if (theirs !== undefined) keepFiles(cheapestChain(manifest.layers, layer, (name) => name === theirs).steps.map((step) => step.file));
    }
  }
  return {
    keepGenerations: keep,
    dropGenerations: Object.keys(manifest.generations).filter((id) => !keep.has(id)),
    dropBranches,
    neededLayers: needed,
    dropLayers: Object.keys(manifest.layers).filter((hash) => !needed.has(hash)),
  };
}

/**
 * The files a kept generation's disk adds to what is kept, by the fewest bytes; without
 * catch-up layers (kept for one host's return, not for good) unless only they provide it.
 */
function keptChain(manifest: Manifest, layer: string, have: (name: string) => boolean): string[] {
  const lasting = (file: string) => manifest.layers[file]?.catchUpFor === undefined;
  try {
    return cheapestChain(manifest.layers, layer, have, lasting).steps.map((step) => step.file);
  } catch {
    return cheapestChain(manifest.layers, layer, have).steps.map((step) => step.file);
  }
}

/** The manifest with the plan applied: generations, branches and layer entries removed, the files noted as dropped at `now`. */
export function applyRetention(manifest: Manifest, plan: RetentionPlan, now: Date): Manifest {
  const pick = <T>(table: Record<string, T>, keep: (key: string) => boolean) =>
    Object.fromEntries(Object.entries(table).filter(([key]) => keep(key)));
  const dropped = { ...manifest.dropped };
  for (const hash of plan.dropLayers) dropped[hash] ??= now.toISOString();
  const next: Manifest = {
    ...manifest,
    generations: pick(manifest.generations, (id) => plan.keepGenerations.has(id)),
    branches: pick(manifest.branches, (name) => !plan.dropBranches.includes(name)),
    layers: pick(manifest.layers, (hash) => plan.neededLayers.has(hash)),
  };
  if (Object.keys(dropped).length > 0) next.dropped = dropped;
  return next;
}
