// What would move between this host and the NAS for a domain, in bytes, each way
// (`kss delta VM`): the sizes come from the local state and the manifest; on disk, only
// the tops and which layer files exist are looked at.
import { stat } from 'node:fs/promises';
import { pathExists } from '../durable-fs.js';
import { hasOwnData } from '../layers.js';
import type { Manifest } from '../nas/format.js';
import { missingLayers } from './disks.js';
import type { LocalState } from './local-state.js';

export interface Delta {
  domain: string;
  /** Sealed here and not on the NAS: what the next push sends. */
  push: { bytes: number; layers: number };
  /** Written into the tops since the last seal (on disk, a little header included): sealed and pushed after the next stop. */
  tops: { bytes: number };
  /**
   * What the next start fetches of the NAS's head: the cheapest files down to layers this
   * host has (lib/nas/chains.ts); `merged` of them are merged layers standing in for
   * several. `withoutMerged`: what the layers themselves would cost (null: the NAS no
   * longer has them all), to show the choice.
   */
  pull: { bytes: number; layers: number; merged: number; withoutMerged: { bytes: number; layers: number } | null };
}

/** The delta of a domain as things are now. */
export async function measureDelta(state: LocalState, manifest: Manifest | undefined): Promise<Delta> {
  const pushLayers = state.pending.flatMap((p) => Object.values(p.layers));
  let topBytes = 0;
  for (const top of Object.values(state.disks)) {
    // A running VM holds its tops: counted as they are on disk, written or not.
    if ((await pathExists(top)) && (await hasOwnData(top).catch(() => true))) topBytes += (await stat(top)).blocks * 512;
  }
  const head = manifest?.head ? manifest.generations[manifest.head] : undefined;
  // A layer two disks share moves once.
  const sizes = (steps: Array<{ file: string }>) => new Map(steps.map(({ file }) => [file, manifest?.layers[file]?.size ?? 0]));
  const sum = (files: Map<string, number>) => [...files.values()].reduce((total, size) => total + size, 0);
  let pull = new Map<string, number>();
  let merged = 0;
  let withoutMerged: Delta['pull']['withoutMerged'] = { bytes: 0, layers: 0 };
  if (manifest && head && head.id !== state.synced?.id && !state.pending.some((p) => p.generation.id === head.id)) {
    const steps = await missingLayers(state, manifest, head);
    pull = sizes(steps);
    merged = new Set(steps.filter(({ layer, file }) => file !== layer).map(({ file }) => file)).size;
    const plain = await missingLayers(state, manifest, head, (file) => manifest.layers[file]?.readsAs === undefined).then(sizes, () => undefined);
    withoutMerged = plain ? { bytes: sum(plain), layers: plain.size } : null;
  }
  return {
    domain: state.domain,
    push: { bytes: pushLayers.reduce((sum, layer) => sum + layer.size, 0), layers: pushLayers.length },
    tops: { bytes: topBytes },
    pull: { bytes: sum(pull), layers: pull.size, merged, withoutMerged },
  };
}
