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
   * host has (lib/nas/chains.ts); `merged` of them are merged layers standing in for several.
   */
  pull: { bytes: number; layers: number; merged: number };
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
  const pull = new Map<string, number>(); // a layer two disks share moves once
  let merged = 0;
  if (manifest && head && head.id !== state.synced?.id && !state.pending.some((p) => p.generation.id === head.id)) {
    for (const { layer, file } of await missingLayers(state, manifest, head)) {
      if (!pull.has(file) && file !== layer) merged += 1;
      pull.set(file, manifest.layers[file]?.size ?? 0);
    }
  }
  return {
    domain: state.domain,
    push: { bytes: pushLayers.reduce((sum, layer) => sum + layer.size, 0), layers: pushLayers.length },
    tops: { bytes: topBytes },
    pull: { bytes: [...pull.values()].reduce((sum, size) => sum + size, 0), layers: pull.size, merged },
  };
}
