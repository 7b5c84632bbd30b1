// Which generations, branches and layers to keep. Pure.
//
// Kept: the head and its nearest `keepGenerations` ancestors whatever their age, and
// every further ancestor younger than `keepDays`; each branch (the losing side of a
// conflict) younger than `keepDays`, with its ancestry kept by the same rule; each
// snapshot, whatever its age, with its ancestry kept by the same rule. A layer
// is needed when a kept generation's disk chain runs through it; no other layer is.
import { ancestry, layerChain, type Generation, type Manifest } from './format.js';

export interface RetentionPolicy {
  keepDays: number;
  keepGenerations: number;
}

export interface RetentionPlan {
  keepGenerations: Set<string>;
  dropGenerations: string[];
  dropBranches: string[];
  neededLayers: Set<string>;
}

/** Decides what retention keeps of a manifest at time `now`. */
export function planRetention(manifest: Manifest, now: Date, policy: RetentionPolicy): RetentionPlan {
  const cutoff = now.getTime() - policy.keepDays * 86_400_000;
  const keep = new Set<string>();
  const keepLine = (head: string) => {
    const young = (generation: Generation, index: number) => index < policy.keepGenerations || Date.parse(generation.created) >= cutoff;
    for (const generation of ancestry(manifest.generations, head, young)) keep.add(generation.id);
  };
  if (manifest.head !== null) keepLine(manifest.head);
  const dropBranches: string[] = [];
  for (const [name, branch] of Object.entries(manifest.branches)) {
    if (Date.parse(branch.created) < cutoff) dropBranches.push(name);
    else keepLine(branch.head);
  }
  for (const snapshot of Object.values(manifest.snapshots ?? {})) keepLine(snapshot.generation);
  const neededLayers = new Set<string>();
  for (const id of keep) {
    for (const layer of Object.values((manifest.generations[id] as { disks: Record<string, string> }).disks)) {
      for (const hash of layerChain(manifest.layers, layer)) neededLayers.add(hash);
    }
  }
  return {
    keepGenerations: keep,
    dropGenerations: Object.keys(manifest.generations).filter((id) => !keep.has(id)),
    dropBranches,
    neededLayers,
  };
}

/** The manifest with the plan applied (generations, branches and layer entries removed). */
export function applyRetention(manifest: Manifest, plan: RetentionPlan): Manifest {
  const pick = <T>(table: Record<string, T>, keep: (key: string) => boolean) =>
    Object.fromEntries(Object.entries(table).filter(([key]) => keep(key)));
  return {
    ...manifest,
    generations: pick(manifest.generations, (id) => plan.keepGenerations.has(id)),
    branches: pick(manifest.branches, (name) => !plan.dropBranches.includes(name)),
    layers: pick(manifest.layers, (hash) => plan.neededLayers.has(hash)),
  };
}
