// Any name (a domain's, a host's) as one safe path component.

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
