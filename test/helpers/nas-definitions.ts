// The portable definitions a test NAS holds (lib/nas/format.ts), read and, as anyone who
// can write to the share could, replaced: a head whose generation names another one.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generationId, type Generation, type Manifest } from '../../lib/nas/format.js';

const manifestPath = (root: string, domain: string) => join(root, 'domains', domain, 'manifest.json');

/** The NAS head's portable definition. */
export function headDefinition(root: string, domain: string): string {
  const manifest = JSON.parse(readFileSync(manifestPath(root, domain), 'utf8')) as Manifest;
  const hash = manifest.generations[manifest.head as string]?.definition as string;
  return readFileSync(join(root, 'domains', domain, 'definitions', `${hash}.xml`), 'utf8');
}

/**
 * Puts `xml` on the NAS as the head's definition, as an attacker on the share would: the
 * file under its own hash, and a manifest whose head is the old head's generation naming
 * it (ids recomputed, so that the manifest is valid).
 */
export function forgeHeadDefinition(root: string, domain: string, xml: string): void {
  const hash = createHash('sha256').update(xml).digest('hex');
  writeFileSync(join(root, 'domains', domain, 'definitions', `${hash}.xml`), xml);
  const manifest = JSON.parse(readFileSync(manifestPath(root, domain), 'utf8')) as Manifest;
  const { id: _old, ...head } = manifest.generations[manifest.head as string] as Generation;
  const made = { ...head, definition: hash };
  const id = generationId(made);
  manifest.generations[id] = { id, ...made };
  manifest.head = id;
  manifest.revision += 1;
  writeFileSync(manifestPath(root, domain), `${JSON.stringify(manifest, null, 2)}\n`);
}
