// The content of a state volume (lib/sync/state-volumes.ts): the small files of a
// machine's state at rest that are not disks (the UEFI variable store, the emulated
// TPM's state directory), packed into the first bytes of a qcow2 volume so that they
// travel, are verified and are kept exactly as layers are.
//
//   "KSSVOL1\n"  u64 BE data length  u32 BE index length  index (JSON)  data
//
// The index lists the files in order, [{path, mode, size}], their bytes follow one after
// the other. A volume that is all zeros holds no bundle: the files did not exist.
// Decoding trusts nothing: a volume comes from the NAS, and what it says is written into
// files on this host.
import { IntegrityError } from './errors.js';

export interface BundleFile {
  /** Relative to the state's place: `nvram` for the variable store, `tpm2/tpm2-00.permall` in a TPM directory. */
  path: string;
  /** Permission bits only. */
  mode: number;
  data: Buffer;
}

const MAGIC = Buffer.from('KSSVOL1\n', 'latin1');
const HEADER = MAGIC.length + 8 + 4;
/** More files than any firmware or TPM state has: a bound on what a bundle may ask to be written. */
export const MAX_FILES = 64;
const MAX_INDEX = 64 * 1024;
/** A path: one or two plain names (a TPM state keeps its files in `tpm2/`). */
const PATH = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(\/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$/u;

/** The bytes of a bundle of `files` (sorted by path, so the same files make the same bytes). */
export function encodeBundle(files: readonly BundleFile[]): Buffer {
  const sorted = [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  for (const file of sorted) problemWith(file.path, file.mode);
  if (sorted.length > MAX_FILES) throw new IntegrityError(`a state bundle holds at most ${MAX_FILES} files, not ${sorted.length}`);
  const index = Buffer.from(JSON.stringify(sorted.map(({ path, mode, data }) => ({ path, mode, size: data.length }))), 'utf8');
  const dataLength = sorted.reduce((sum, file) => sum + file.data.length, 0);
  const header = Buffer.alloc(HEADER);
  MAGIC.copy(header);
  header.writeBigUInt64BE(BigInt(dataLength), MAGIC.length);
  header.writeUInt32BE(index.length, MAGIC.length + 8);
  return Buffer.concat([header, index, ...sorted.map((file) => file.data)]);
}

/**
 * The files of a bundle at the start of `bytes` (a volume's content, or its first part:
 * `bundleLength` says how much is needed), or undefined when the volume holds none.
 * Throws IntegrityError on anything kvm-snapshot-sync did not write.
 */
export function decodeBundle(bytes: Buffer): BundleFile[] | undefined {
  if (bytes.subarray(0, HEADER).every((byte) => byte === 0)) return undefined;
  const length = bundleLength(bytes);
  if (length > bytes.length) throw bad(`it is ${length} bytes long, beyond the ${bytes.length} bytes of its volume`);
  const indexLength = bytes.readUInt32BE(MAGIC.length + 8);
  let index: unknown;
  try {
    index = JSON.parse(bytes.subarray(HEADER, HEADER + indexLength).toString('utf8'));
  } catch {
    throw bad('its index is not JSON');
  }
  if (!Array.isArray(index) || index.length > MAX_FILES) throw bad(`its index is not a list of at most ${MAX_FILES} files`);
  const files: BundleFile[] = [];
  let at = HEADER + indexLength;
  for (const entry of index as unknown[]) {
    const { path, mode, size } = (entry ?? {}) as Record<string, unknown>;
    if (typeof path !== 'string' || typeof mode !== 'number' || typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw bad('an index entry is not {path, mode, size}');
    const problem = problemWith(path, mode, false);
    if (problem) throw bad(problem);
    if (files.some((file) => file.path === path || path.startsWith(`${file.path}/`) || file.path.startsWith(`${path}/`))) throw bad(`${path} is named twice`);
    files.push({ path, mode, data: bytes.subarray(at, at + size) });
    at += size;
  }
  if (at !== length) throw bad('its index does not add up to its length');
  return files;
}

/** How many bytes the bundle at the start of `bytes` takes (its header is enough). */
export function bundleLength(bytes: Buffer): number {
  if (bytes.length < HEADER || !bytes.subarray(0, MAGIC.length).equals(MAGIC)) throw bad('it does not begin as kvm-snapshot-sync writes a state bundle');
  const dataLength = bytes.readBigUInt64BE(MAGIC.length);
  const indexLength = bytes.readUInt32BE(MAGIC.length + 8);
  if (indexLength > MAX_INDEX || dataLength > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('its lengths are out of bounds');
  return HEADER + indexLength + Number(dataLength);
}

function problemWith(path: string, mode: number, throwIt = true): string | undefined {
  const problem = !PATH.test(path)
    ? `${JSON.stringify(path)} is not a plain file name (one directory deep at most)`
    : !Number.isInteger(mode) || mode < 0 || mode > 0o777
      ? `${path}: mode ${mode} is not permission bits`
      : undefined;
  if (problem && throwIt) throw new IntegrityError(`cannot bundle the state: ${problem}`);
  return problem;
}

function bad(why: string): IntegrityError {
  return new IntegrityError(`a state volume does not hold a valid state bundle: ${why}`, {
    remedy: 'it did not come from kvm-snapshot-sync: roll back to an earlier generation (kss snapshot list), or check the NAS',
  });
}
