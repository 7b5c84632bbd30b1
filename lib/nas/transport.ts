// The contract between the NAS repository (lib/nas/repository.ts) and the ways of
// reaching a NAS: a directory (lib/nas/dir-transport.ts: a mounted share or a local
// disk) and SSH (lib/nas/ssh-transport.ts: the system's OpenSSH client).
//
// Paths. Every path is relative to the NAS root, uses "/" and never holds "..". The
// repository builds them (lib/nas/format.ts); a transport never interprets them beyond
// joining them to its root, and quotes them wherever a shell could see them.
//
// Deadlines. Nothing may hang forever: libvirt waits for the hook without limit.
// Small operations (everything but putLayer/getLayer) finish or fail within the
// transport's `opTimeoutMs`. Streams fail when no byte moves for `stallTimeoutMs` (the
// configuration's stallSeconds; lib/nas/stall.ts words it); over SSH the NAS side is
// ended too, and keep-alives notice a dead link sooner. A failure to reach the NAS at all is a
// NasUnreachableError; every other failure a ToolError or a plain Error with the cause.
//
// Atomicity. writeFileAtomic leaves either the old or the new content under the name,
// durable once it returns. mkdirExclusive succeeds for exactly one caller among any
// number of hosts. rename is atomic within the NAS. replaceIfUnchanged is a
// compare-and-swap done in one round trip: the manifest's lock is held only while it runs.
//
// Layers. putLayer and getLayer move one layer file, resumably: an interrupted transfer
// (killed process, dropped link) leaves a partial file that the next call with the same
// arguments continues from, after checking that what is there is right. Both verify
// the SHA-256 of the complete file against the expected hash; putLayer publishes the
// file under its final name only after that check, getLayer leaves the local file
// complete and verified or fails (the caller publishes it locally).
//
// Trust. Anything that can write to the NAS can put any file under any name there:
// every read is bounded, only regular files are read, and a directory NAS follows no
// symbolic link (a share's link could point into this host's own files).
import { IntegrityError } from '../errors.js';

/** The most of a lock's owner file anything reads (it holds a few hundred bytes). */
export const OWNER_MAX_BYTES = 64 * 1024;

/** Sizes and times of a file or directory on the NAS. */
export interface NasEntry {
  name: string;
  size: number;
  /** Modification time by the NAS's own clock, ms since the epoch. */
  mtimeMs: number;
  isDirectory: boolean;
  /** A regular file (not a directory, symbolic link, FIFO or device). */
  isFile: boolean;
}

/** Progress of one transfer: bytes of the layer file done so far out of its size. */
export type TransferProgress = (bytesDone: number, bytesTotal: number) => void;

export interface TransferOptions {
  onProgress?: TransferProgress;
  /** An upload's cap on the layer bytes it reads, per second (lib/nas/pace.ts); none: as fast as the link goes. */
  maxBytesPerSecond?: number;
}

export interface TransferResult {
  /** Layer bytes moved by this call (less than the size when it resumed). */
  bytesMoved: number;
  /** The layer was already there: nothing moved. */
  alreadyThere: boolean;
  /** It continued an interrupted transfer from this offset. */
  resumedFrom: number;
}

/** Who holds a lock directory, and how long since its newest activity (NAS clock). */
export interface LockBusy {
  ownerData: Buffer | undefined;
  ageMs: number;
}

/** The outcome of mkdirExclusive: created, or who holds it and for how long. */
export type ExclusiveResult = { created: true } | ({ created: false } & LockBusy);

/** The lock directory a replaceIfUnchanged holds while it compares and writes. */
export interface LockClaim {
  path: string;
  ownerName: string;
  /** Written into the owner file; the lock is removed afterwards only if it still holds this. */
  ownerData: Buffer;
}

/** What replaceIfUnchanged did; only "replaced" wrote anything. */
export type ReplaceResult =
  | { outcome: 'replaced' }
  /** The file is no longer what the caller read. */
  | { outcome: 'changed' }
  /** A path that had to exist does not. */
  | { outcome: 'missing'; path: string }
  /** Another holder has the lock. */
  | ({ outcome: 'locked' } & LockBusy);

export interface NasTransport {
  /** Where the NAS is, for messages: `/mnt/nas/kss` or `ssh kss@nas:22 /volume1/kss`. */
  readonly where: string;

  /**
   * A small file's content, or undefined when it does not exist. Fails with an
   * IntegrityError when it is larger than `maxBytes` or not a regular file: nothing
   * read from the NAS is unbounded.
   */
  readFile(path: string, maxBytes: number): Promise<Buffer | undefined>;

  /** Replaces a small file atomically and durably (temp file, fsync, rename, fsync dir). */
  writeFileAtomic(path: string, data: Buffer): Promise<void>;

  /** A file's or directory's size and time, or undefined when it does not exist. */
  stat(path: string): Promise<NasEntry | undefined>;

  /** The entries of a directory; [] when it does not exist. */
  list(dir: string): Promise<NasEntry[]>;

  /** Removes a file or a whole directory tree; nothing happens when it does not exist. */
  remove(path: string): Promise<void>;

  /** Renames; returns false when `from` does not exist. Replaces `to` if it exists. */
  rename(from: string, to: string): Promise<boolean>;

  /**
   * Creates directory `path` (its parents as needed) and the file `ownerName` in it,
   * or, when `path` already exists, returns that file's content and the age of the
   * directory's newest activity (its own or the owner file's mtime, whichever is later)
   * by the NAS's clock. Exactly one of any number of concurrent callers creates it.
   */
  mkdirExclusive(path: string, ownerName: string, ownerData: Buffer): Promise<ExclusiveResult>;

  /**
   * Replaces the small file `path` with `data` only if it is unchanged: in one round
   * trip it takes the lock directory (as mkdirExclusive), checks that every path in
   * `required` exists and that `path` still hashes (SHA-256) to `expectedSha256` (null:
   * that it does not exist), removes the files in `remove` (if there: a removal is
   * thus never interleaved with a writer that names one of them), replaces `path` as
   * writeFileAtomic does, and removes the lock if the lock still holds its owner data.
   */
  replaceIfUnchanged(
    path: string,
    data: Buffer,
    guard: { expectedSha256: string | null; required: string[]; remove?: string[]; lock: LockClaim },
  ): Promise<ReplaceResult>;

  /**
   * Uploads the local file `localPath` (whose SHA-256 must be `hash`) to `target`,
   * through a partial file named by `partPath` (the exact name, or, over SSH, the
   * prefix of one name per attempt); resumes a partial file left by an interrupted
   * call; publishes `target` (read-only) only when the complete file hashes to `hash`.
   * Already there: returns at once. A mismatch fails with an IntegrityError, and the
   * partial file is removed.
   */
  putLayer(localPath: string, hash: string, partPath: string, target: string, options?: TransferOptions): Promise<TransferResult>;

  /**
   * Downloads `source`, which the manifest says is `size` bytes, into the local file
   * `localPart`, continuing a partial file left by an interrupted call. It never writes
   * more than `size` bytes (a NAS file of another size is refused before a byte moves,
   * and a stream that decompresses to more is cut there); fails with an IntegrityError
   * when the complete file does not hash to `hash` (after removing `localPart`). Throws
   * when `source` is missing.
   */
  getLayer(source: string, hash: string, size: number, localPart: string, options?: TransferOptions): Promise<TransferResult>;

  /** Releases what the transport holds (connections); the transport is unusable after. */
  close(): Promise<void>;
}

/** The refusal of a NAS file larger than a reader allows. */
export function tooLargeError(where: string, path: string, maxBytes: number): IntegrityError {
  return new IntegrityError(`${where}/${path} is larger than ${maxBytes} bytes, more than a kvm-snapshot-sync file can be; it was not read`, {
    remedy: 'the file on the NAS was damaged or replaced: restore it from a backup, or move the domain directory aside and push again from the host that has the VM',
  });
}

/** The refusal of a NAS path that is not a regular file where one must be. */
export function notRegularError(where: string, path: string): IntegrityError {
  return new IntegrityError(`${where}/${path} is not a regular file; kvm-snapshot-sync reads only regular files from the NAS`, {
    remedy: 'remove it from the NAS (nothing of kvm-snapshot-sync makes such a file)',
  });
}
