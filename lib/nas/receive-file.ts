// The local end of a download, shared by both transports: continue a partial file,
// hash every byte (the kept prefix from disk, the rest as it arrives), and keep the
// file only when the whole of it hashes to what its name says.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rm, stat } from 'node:fs/promises';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { IntegrityError } from '../errors.js';
import type { TransferProgress, TransferResult } from './transport.js';

/** A source of the remote file's bytes from `offset` on; `finished` settles when it is done. */
export interface OpenedSource {
  stream: Readable;
  /** Resolves when the source has ended well, or rejects with why it failed. */
  finished: Promise<void>;
  /** Stops the source (used when the local side fails). */
  abort(): void;
}

export interface ReceiveOptions {
  open: (offset: number) => Promise<OpenedSource>;
  localPart: string;
  hash: string;
  /** The remote file's size. */
  size: number;
  /** What the file is, for messages. */
  what: string;
  onProgress?: TransferProgress;
}

/**
 * Receives a file into `localPart`, resuming from its current length. If a resumed file
 * fails verification the kept prefix may have been the bad part, so it starts over once
 * from nothing; a file that fails from nothing is corrupt at the source.
 */
export async function receiveFile(options: ReceiveOptions): Promise<TransferResult> {
  const existing = await sizeOf(options.localPart);
  const offset = existing <= options.size ? existing : 0;
  try {
    return await receiveFrom(options, offset);
  } catch (error) {
    if (!(error instanceof IntegrityError) || offset === 0) throw error;
    return receiveFrom(options, 0);
  }
}

async function receiveFrom(options: ReceiveOptions, offset: number): Promise<TransferResult> {
  const { localPart, hash, size, onProgress } = options;
  const digest = createHash('sha256');
  if (offset > 0) await hashPrefix(localPart, offset, digest);
  const handle = await open(localPart, offset > 0 ? 'r+' : 'w', 0o600);
  await handle.truncate(offset);
  await handle.close();

  let done = offset;
  onProgress?.(done, size);
  const source = await options.open(offset);
  const hashing = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      digest.update(chunk);
      done += chunk.length;
      onProgress?.(done, size);
      callback(null, chunk);
    },
  });
  try {
    await pipeline(source.stream, hashing, createWriteStream(localPart, { flags: 'r+', start: offset }));
    await source.finished;
  } catch (error) {
    source.abort();
    await source.finished.catch(() => undefined);
    throw error;
  }
  const fsyncHandle = await open(localPart, 'r');
  await fsyncHandle.sync();
  await fsyncHandle.close();

  const actual = digest.digest('hex');
  if (done !== size || actual !== hash) {
    await rm(localPart, { force: true });
    throw new IntegrityError(
      `${options.what} is corrupt: ${done} bytes hashing to ${actual}, expected ${size} bytes hashing to ${hash}`,
      { remedy: 'nothing local was changed; if this repeats, the copy on the NAS is damaged' },
    );
  }
  return { bytesMoved: size - offset, alreadyThere: false, resumedFrom: offset };
}

/** Feeds the first `length` bytes of a file into a hash. */
export async function hashPrefix(path: string, length: number, digest: Hash): Promise<void> {
  if (length === 0) return;
  for await (const chunk of createReadStream(path, { start: 0, end: length - 1, highWaterMark: 2 ** 20 })) {
    digest.update(chunk as Buffer);
  }
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw error;
  }
}
