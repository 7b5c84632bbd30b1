// Any name (a domain's, a host's) as one safe path component, and the names of layer files.
import { isSha256 } from './hash.js';

/** Keeps letters, digits, `.`, `_`, `-`; percent-encodes the rest, and a leading dot. */
export function escapeFileName(name: string): string {
  const escaped = Array.from(Buffer.from(name, 'utf8'))
    .map((byte) => {
      const char = String.fromCharCode(byte);
      return /[A-Za-z0-9._-]/u.test(char) ? char : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
    })
    .join('');
  return escaped.startsWith('.') ? `%2E${escaped.slice(1)}` : escaped;
}

/** The name escapeFileName was given. */
export function unescapeFileName(escaped: string): string {
  return decodeURIComponent(escaped);
}

/** The ending of a layer's file name, here and on the NAS. */
export const LAYER_SUFFIX = '.qcow2';

/** A layer's file name: its hash. */
export function layerFileName(hash: string): string {
  return `${hash}${LAYER_SUFFIX}`;
}

/** The hash a layer file name stands for, or undefined if it is not a layer's name. */
export function hashOfLayerFileName(name: string): string | undefined {
  const hash = name.endsWith(LAYER_SUFFIX) ? name.slice(0, -LAYER_SUFFIX.length) : '';
  return isSha256(hash) ? hash : undefined;
}
