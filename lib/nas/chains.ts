// Which NAS files make up a disk's chain. Pure.
//
// A layer is named by the hash of its bytes, and the header of the layer above names it,
// so a published layer can never be shortened in place. A merged layer stands in for
// one instead: its `readsAs` is the layer whose guest content it has, its `parent` a
// layer further down. A host that lacks a layer may fetch any file that reads as it
// (and keeps it under the name the layers above expect), so the same logical chain has
// several physical ones. Two choices are made here:
//
//   canonicalChain  fewest files (then fewest bytes): what the NAS keeps for the head,
//                   and the depth that nasChainDepth bounds. Catch-up layers (made for
//                   one host's return) only where nothing else provides a name.
//   cheapestChain   fewest bytes to fetch for a host that has some layers already: a
//                   catch-up moves the missing layers, a merged layer, or a full image,
//                   whichever is smallest.
import { IntegrityError } from '../errors.js';
import type { LayerInfo } from './format.js';

/** One link of a chain: `layer` is the name the layer above (or a generation) uses; `file` the NAS file that provides it. */
export interface ChainStep {
  layer: string;
  file: string;
}

/** The layer whose guest content a file has: the one it stands in for, or itself. */
export function readsAs(layers: Record<string, LayerInfo>, file: string): string {
  return layers[file]?.readsAs ?? file;
}

/** providers() of a layers table, made once: retention asks for many chains of one manifest. */
const providersOf = new WeakMap<Record<string, LayerInfo>, Map<string, string[]>>();

/**
 * Every name a chain may use, with the files that provide it (the original first),
 * made once per table: do not change the table after asking (validation, which judges
 * tables as they are changed, indexes them afresh).
 */
export function providers(layers: Record<string, LayerInfo>): Map<string, string[]> {
  let known = providersOf.get(layers);
  if (!known) providersOf.set(layers, (known = indexProviders(layers)));
  return known;
}

/** The index providers() keeps, made now. */
function indexProviders(layers: Record<string, LayerInfo>): Map<string, string[]> {
  const byName = new Map<string, string[]>();
  for (const [file, info] of Object.entries(layers)) {
    const name = info.readsAs ?? file;
    const list = byName.get(name) ?? [];
    if (info.readsAs === undefined) list.unshift(file);
    else list.push(file);
    byName.set(name, list);
  }
  return byName;
}

/** Whether `name` can be read from the listed files (the table as it is now). */
export function isProvided(layers: Record<string, LayerInfo>, name: string): boolean {
  return indexProviders(layers).has(name);
}

/**
 * The chain of `layer` in the fewest files (then bytes), nearest first, down to a base.
 * A catch-up layer is used only where nothing else provides a name (a rollback to a
 * branch retention kept through one): it is kept for one host's return, not for good.
 */
export function canonicalChain(layers: Record<string, LayerInfo>, layer: string): ChainStep[] {
  return shortest(layers, layer, (file) => [layers[file]?.catchUpFor === undefined ? 1 : LAST_RESORT, sizeOf(layers, file)], () => false, () => true).steps;
}

/** The weight of a catch-up layer in a canonical chain: more than any chain of other files. */
const LAST_RESORT = 2 ** 32;

/**
 * What a host that already has the layers `have` says yes to must fetch to read
 * `layer`: the files, nearest first, that cost the fewest bytes (then the fewest files),
 * among those `usable` accepts (all by default).
 */
export function cheapestChain(
  layers: Record<string, LayerInfo>,
  layer: string,
  have: (name: string) => boolean,
  usable: (file: string) => boolean = () => true,
): { steps: ChainStep[]; bytes: number } {
  const { steps, score } = shortest(layers, layer, (file) => [sizeOf(layers, file), 1], have, usable);
  return { steps, bytes: score[0] };
}

/**
 * A name whose providers' parents lead back to it, or undefined. Each name is walked
 * once (an iterative depth-first search: a hostile manifest may be deep).
 */
export function loopIn(layers: Record<string, LayerInfo>): string | undefined {
  const byName = indexProviders(layers);
  const parentsOf = (name: string) => (byName.get(name) ?? []).map((file) => layers[file]?.parent ?? null).filter((p): p is string => p !== null);
  const done = new Set<string>();
  const onPath = new Set<string>();
  for (const start of byName.keys()) {
    if (done.has(start)) continue;
    const stack: Array<{ name: string; next: string[] }> = [{ name: start, next: parentsOf(start) }];
    onPath.add(start);
    while (stack.length > 0) {
      const top = stack.at(-1) as { name: string; next: string[] };
      const child = top.next.pop();
      if (child === undefined) {
        onPath.delete(top.name);
        done.add(top.name);
        stack.pop();
      } else if (onPath.has(child)) {
        return child;
      } else if (!done.has(child)) {
        onPath.add(child);
        stack.push({ name: child, next: parentsOf(child) });
      }
    }
  }
  return undefined;
}

type Score = [number, number];

function sizeOf(layers: Record<string, LayerInfo>, file: string): number {
  return layers[file]?.size ?? 0;
}

/**
 * The lightest path from `from` to a base (or to a name `stop` accepts), weighing each
 * file by `weigh` (compared as pairs). Iterative: a hostile manifest may hold a chain
 * deep enough to overflow a recursion. Throws an IntegrityError on a name no usable file
 * provides, or on parents that loop.
 */
function shortest(
  layers: Record<string, LayerInfo>,
  from: string,
  weigh: (file: string) => Score,
  stop: (name: string) => boolean,
  usable: (file: string) => boolean,
): { steps: ChainStep[]; score: Score } {
  const byName = providers(layers);
  const best = new Map<string, { score: Score; file: string | null }>();
  const open = new Set<string>();
  const stack = [from];
  while (stack.length > 0) {
    const name = stack.at(-1) as string;
    if (best.has(name)) {
      stack.pop();
      continue;
    }
    if (stop(name)) {
      best.set(name, { score: [0, 0], file: null });
      stack.pop();
      continue;
    }
    const files = (byName.get(name) ?? []).filter(usable);
    if (files.length === 0) throw chainError(`no file on the NAS provides layer ${name}`);
    const waiting = files.map((file) => layers[file]?.parent ?? null).filter((parent): parent is string => parent !== null && !best.has(parent));
    if (waiting.length > 0) {
      if (open.has(name)) throw chainError(`the parents of layer ${name} loop`);
      open.add(name);
      stack.push(...waiting);
      continue;
    }
    let chosen: { score: Score; file: string } | undefined;
    for (const file of files) {
      const parent = layers[file]?.parent ?? null;
      const below: Score = parent === null ? [0, 0] : (best.get(parent) as { score: Score }).score;
      const [a, b] = weigh(file);
      const score: Score = [a + below[0], b + below[1]];
      if (!chosen || score[0] < chosen.score[0] || (score[0] === chosen.score[0] && score[1] < chosen.score[1])) chosen = { score, file };
    }
    best.set(name, chosen as { score: Score; file: string });
    open.delete(name);
    stack.pop();
  }
  const steps: ChainStep[] = [];
  for (let name: string | null = from; name !== null; ) {
    const { file } = best.get(name) as { file: string | null };
    if (file === null) break;
    steps.push({ layer: name, file });
    name = layers[file]?.parent ?? null;
  }
  return { steps, score: (best.get(from) as { score: Score }).score };
}

function chainError(problem: string): IntegrityError {
  return new IntegrityError(`the NAS manifest is damaged: ${problem}`, {
    remedy: 'nothing was changed; the manifest on the NAS was written by hand or corrupted: restore it from a backup, or move the domain directory aside and push again from the host that has the VM',
  });
}
