// SHA-256: of files, streamed (a 12 GB layer is never held in memory), and of small data.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

/** Called as bytes are read, with the running total. */
export type ProgressCallback = (bytesDone: number) => void;

/** The lowercase hex SHA-256 of a file's bytes. */
export async function sha256File(path: string, onProgress?: ProgressCallback): Promise<string> {
  const hash = createHash('sha256');
  let done = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 2 ** 20 })) {
    hash.update(chunk as Buffer);
    done += (chunk as Buffer).length;
    onProgress?.(done);
  }
  return hash.digest('hex');
}

/** The lowercase hex SHA-256 of bytes or text in memory (a manifest, an id's parts). */
export function sha256Of(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

const SHA256_HEX = /^[0-9a-f]{64}$/u;

/** Whether a string is a lowercase hex SHA-256. */
export function isSha256(text: string): boolean {
  return SHA256_HEX.test(text);
}
