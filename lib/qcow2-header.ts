// The header of a qcow2 file pulled from the NAS, read by us before any tool opens it.
//
// A layer's hash proves it is the file the manifest names, not that it is harmless:
// anything that can write to the NAS can write both. A qcow2 header names other files
// (a backing file, an external data file) that QEMU would open as root's guest, so a
// pulled layer is used only if its header names exactly what a layer of ours does: its
// parent layer by bare file name, in format qcow2, and nothing else. Parsing it here
// (not with qemu-img, which would already open an external data file) keeps the check
// free of side effects. Pure, but for the small read in readLayerHeader.
//
// Layout (docs/interop/qcow2.txt in QEMU): a big-endian header, then header extensions
// (type, length, data padded to 8 bytes) up to an end marker, all in the first cluster.
import { open } from 'node:fs/promises';

const MAGIC = 0x514649fb; // "QFI\xfb"
const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_DATA_FILE = 0x44415441;
const EXT_CRYPTO = 0x0537be77;
/** Incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file, 3 compression type, 4 extended L2. */
const INCOMPATIBLE_CORRUPT = 1n << 1n;
const INCOMPATIBLE_DATA_FILE = 1n << 2n;
const INCOMPATIBLE_KNOWN = 0b11111n;
/** The most of a file read for its header: QEMU's largest cluster (2 MiB) holds it all. */
export const HEADER_READ_BYTES = 2 * 2 ** 20;

export interface Qcow2Header {
  version: number;
  virtualSize: bigint;
  /** The backing file name as written, or undefined for a standalone image. */
  backingFile: string | undefined;
  /** The backing format extension, if any. */
  backingFormat: string | undefined;
  /** Names an external data file (incompatible feature bit or extension). */
  dataFile: boolean;
  encrypted: boolean;
  corrupt: boolean;
  /** Incompatible feature bits this reader does not know. */
  unknownIncompatible: bigint;
}

/** Parses the start of a qcow2 file; throws an Error saying why it is not one. */
export function parseQcow2Header(bytes: Buffer): Qcow2Header {
  const need = (end: number, what: string) => {
    if (bytes.length < end) throw new Error(`it ends inside its ${what}`);
  };
  need(72, 'header');
  if (bytes.readUInt32BE(0) !== MAGIC) throw new Error('it is not a qcow2 image (no qcow2 magic)');
  const version = bytes.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw new Error(`it is qcow2 version ${version}, not 2 or 3`);
  const backingOffset = bytes.readBigUInt64BE(8);
  const backingSize = bytes.readUInt32BE(16);
  const clusterBits = bytes.readUInt32BE(20);
  if (clusterBits < 9 || clusterBits > 21) throw new Error(`its cluster size 2^${clusterBits} is out of range`);
  const virtualSize = bytes.readBigUInt64BE(24);
  const encrypted = bytes.readUInt32BE(32) !== 0;
  let incompatible = 0n;
  let headerLength = 72;
  if (version === 3) {
    need(104, 'version 3 header');
    incompatible = bytes.readBigUInt64BE(72);
    headerLength = bytes.readUInt32BE(100);
    if (headerLength < 104 || headerLength % 8 !== 0) throw new Error(`its header length ${headerLength} is invalid`);
  }
  const clusterSize = 2 ** clusterBits;

  let backingFile: string | undefined;
  if (backingOffset !== 0n || backingSize !== 0) {
    const start = Number(backingOffset);
    if (backingSize === 0 || backingSize > 1023 || start < headerLength || start + backingSize > clusterSize) {
      throw new Error('its backing file name lies outside its first cluster or is too long');
    }
    need(start + backingSize, 'backing file name');
    backingFile = bytes.subarray(start, start + backingSize).toString('latin1');
  }

  let backingFormat: string | undefined;
  let dataFileExtension = false;
  let cryptoExtension = false;
  for (let at = headerLength; ; ) {
    need(at + 8, 'header extensions');
    const type = bytes.readUInt32BE(at);
    const length = bytes.readUInt32BE(at + 4);
    if (type === EXT_END) break;
    const end = at + 8 + length;
    if (end > clusterSize) throw new Error('its header extensions run past its first cluster');
    need(end, 'header extensions');
    const data = bytes.subarray(at + 8, end);
    if (type === EXT_BACKING_FORMAT) backingFormat = data.toString('latin1');
    if (type === EXT_DATA_FILE) dataFileExtension = true;
    if (type === EXT_CRYPTO) cryptoExtension = true;
    at = end + ((8 - (length % 8)) % 8);
  }
  return {
    version,
    virtualSize,
    backingFile,
    backingFormat,
    dataFile: (incompatible & INCOMPATIBLE_DATA_FILE) !== 0n || dataFileExtension,
    encrypted: encrypted || cryptoExtension,
    corrupt: (incompatible & INCOMPATIBLE_CORRUPT) !== 0n,
    unknownIncompatible: incompatible & ~INCOMPATIBLE_KNOWN,
  };
}

/**
 * What makes a pulled file unfit to be a layer whose parent is the file named
 * `parentFile` (undefined: a base, with no backing file), or undefined when it fits.
 */
export function layerHeaderProblem(header: Qcow2Header, parentFile: string | undefined): string | undefined {
  if (header.dataFile) return 'it names an external data file';
  if (header.encrypted) return 'it is encrypted';
  if (header.corrupt) return 'it is marked corrupt';
  if (header.unknownIncompatible !== 0n) return `it needs qcow2 features this host does not know (0x${header.unknownIncompatible.toString(16)})`;
  if (parentFile === undefined) {
    return header.backingFile === undefined ? undefined : `it names a backing file (${JSON.stringify(header.backingFile)}), but its manifest says it is a base`;
  }
  if (header.backingFile !== parentFile) {
    return `its backing file is ${header.backingFile === undefined ? 'none' : JSON.stringify(header.backingFile)}, not its parent layer ${parentFile}`;
  }
  if (header.backingFormat !== 'qcow2') return `its backing format is ${header.backingFormat === undefined ? 'not recorded' : JSON.stringify(header.backingFormat)}, not qcow2`;
  return undefined;
}

/** The first HEADER_READ_BYTES of a local file (fewer when it is shorter). */
export async function readLayerHeader(path: string): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(HEADER_READ_BYTES);
    let length = 0;
    for (let read = -1; read !== 0 && length < buffer.length; length += read) {
      ({ bytesRead: read } = await handle.read(buffer, length, buffer.length - length, length));
    }
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}
