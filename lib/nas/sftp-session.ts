// A client of the SSH File Transfer Protocol, version 3 (draft-ietf-secsh-filexfer-02,
// the version OpenSSH speaks), over the stdio of an `ssh -s … sftp` process: the
// requests the SSH transport's small operations need (lib/nas/sftp-ops.ts), and
// OpenSSH's extensions posix-rename (an atomic rename that replaces its target) and
// fsync. An sshd that serves SFTP in-process (`Subsystem sftp internal-sftp`) runs no
// shell for it: no login shell's start-up files, none of the NAS account's ~/.bashrc.
//
// Replies are matched to requests by id, so requests may be in flight together. The
// reader bounds what it buffers: a reply is at most MAX_PACKET bytes (whatever the
// server says), and a server that says more is cut off.
import type { Readable, Writable } from 'node:stream';

const INIT = 1;
const VERSION = 2;
const OPEN = 3;
const CLOSE = 4;
const READ = 5;
const WRITE = 6;
const LSTAT = 7;
const FSTAT = 8;
const OPENDIR = 11;
const READDIR = 12;
const REMOVE = 13;
const MKDIR = 14;
const RMDIR = 15;
const STATUS = 101;
const HANDLE = 102;
const DATA = 103;
const NAME = 104;
const ATTRS = 105;
const EXTENDED = 200;

/** Status codes a caller tells apart. */
export const FX = { OK: 0, EOF: 1, NO_SUCH_FILE: 2, PERMISSION_DENIED: 3, FAILURE: 4, OP_UNSUPPORTED: 8 } as const;

/** Open flags. */
export const OPEN_FLAGS = { READ: 0x01, WRITE: 0x02, CREATE: 0x08, TRUNCATE: 0x10, EXCLUSIVE: 0x20 } as const;

const ATTR_SIZE = 0x1;
const ATTR_UIDGID = 0x2;
const ATTR_PERMISSIONS = 0x4;
const ATTR_ACMODTIME = 0x8;
const ATTR_EXTENDED = 0x80000000;

/** The largest reply read: a READ of READ_CHUNK, a directory listing's batch (OpenSSH sends ≤ 100 names). */
const MAX_PACKET = 512 * 1024;
/** Bytes asked for per READ, and sent per WRITE (OpenSSH serves up to 255 KiB). */
export const IO_CHUNK = 64 * 1024;

export const POSIX_RENAME = 'posix-rename@openssh.com';
export const FSYNC = 'fsync@openssh.com';

export interface SftpAttrs {
  size?: number;
  permissions?: number;
  /** Seconds since the epoch, by the server's clock. */
  mtime?: number;
}

export interface SftpName {
  filename: string;
  attrs: SftpAttrs;
}

/** A request the server answered with a status other than OK. */
export class SftpStatusError extends Error {
  constructor(
    readonly code: number,
    readonly serverMessage: string,
    request: string,
  ) {
    super(`SFTP ${request} failed: ${serverMessage || `status ${code}`}`);
  }
}

const S_IFMT = 0o170000;
export const isDirectoryMode = (mode: number | undefined) => mode !== undefined && (mode & S_IFMT) === 0o040000;
export const isRegularMode = (mode: number | undefined) => mode !== undefined && (mode & S_IFMT) === 0o100000;

/** Builds a request's payload. */
class Packet {
  private readonly parts: Buffer[] = [];

  byte(value: number): this {
    this.parts.push(Buffer.from([value]));
    return this;
  }

  uint32(value: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(value >>> 0);
    this.parts.push(b);
    return this;
  }

  uint64(value: number): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(value));
    this.parts.push(b);
    return this;
  }

  string(value: string | Buffer): this {
    const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
    this.uint32(bytes.length);
    this.parts.push(bytes);
    return this;
  }

  attrs(attrs: SftpAttrs): this {
    if (attrs.permissions === undefined) return this.uint32(0);
    return this.uint32(ATTR_PERMISSIONS).uint32(attrs.permissions);
  }

  framed(): Buffer {
    const body = Buffer.concat(this.parts);
    const head = Buffer.alloc(4);
    head.writeUInt32BE(body.length);
    return Buffer.concat([head, body]);
  }
}

/** Reads a reply's fields, refusing to read past its end. */
class Reader {
  private at = 0;

  constructor(private readonly buffer: Buffer) {}

  private need(bytes: number): void {
    if (this.at + bytes > this.buffer.length) throw new Error('SFTP: a reply ended early (the server is not speaking SFTP version 3)');
  }

  byte(): number {
    this.need(1);
    return this.buffer.readUInt8(this.at++);
  }

  uint32(): number {
    this.need(4);
    const value = this.buffer.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }

  uint64(): number {
    this.need(8);
    const value = this.buffer.readBigUInt64BE(this.at);
    this.at += 8;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error('SFTP: a size beyond 2^53');
    return Number(value);
  }

  bytes(): Buffer {
    const length = this.uint32();
    this.need(length);
    const value = this.buffer.subarray(this.at, this.at + length);
    this.at += length;
    return value;
  }

  string(): string {
    return this.bytes().toString('utf8');
  }

  attrs(): SftpAttrs {
    const flags = this.uint32();
    const attrs: SftpAttrs = {};
    if (flags & ATTR_SIZE) attrs.size = this.uint64();
    if (flags & ATTR_UIDGID) {
      this.uint32(); // uid
      this.uint32(); // gid
    }
    if (flags & ATTR_PERMISSIONS) attrs.permissions = this.uint32();
    if (flags & ATTR_ACMODTIME) {
      this.uint32();
      attrs.mtime = this.uint32();
    }
    if (flags & ATTR_EXTENDED) {
      for (let n = this.uint32(); n > 0; n -= 1) {
        this.bytes(); // type
        this.bytes(); // data
      }
    }
    return attrs;
  }
}

type Reply = { type: number; body: Reader };

export class SftpSession {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (reply: Reply) => void; reject: (error: Error) => void }>();
  private buffered: Buffer = Buffer.alloc(0);
  private broken: Error | undefined;
  private version: ((reply: Reply) => void) | undefined;

  /** The extensions the server offers, by name. */
  readonly extensions = new Map<string, string>();

  private constructor(
    private readonly input: Writable,
    output: Readable,
  ) {
    output.on('data', (chunk: Buffer) => this.take(chunk));
    output.on('end', () => this.fail(new Error('SFTP: the server ended the session')));
    output.on('error', (error: Error) => this.fail(error));
    input.on('error', (error: Error) => this.fail(error));
  }

  /** Starts a session on a server's stdio: INIT, and its VERSION with the extensions it offers. */
  static async start(input: Writable, output: Readable): Promise<SftpSession> {
    const session = new SftpSession(input, output);
    const reply = await new Promise<Reply>((resolve, reject) => {
      session.version = resolve;
      session.waiting.set(0, { resolve, reject });
      input.write(new Packet().byte(INIT).uint32(3).framed());
    });
    const version = reply.body.uint32();
    if (version !== 3) throw new Error(`SFTP: the server speaks version ${version}, not 3`);
    for (;;) {
      let name: string;
      try {
        name = reply.body.string();
      } catch {
        break; // no more extension pairs
      }
      session.extensions.set(name, reply.body.string());
    }
    return session;
  }

  /** Ends every request in flight with `error`; later requests fail at once. */
  fail(error: Error): void {
    this.broken ??= error;
    for (const { reject } of this.waiting.values()) reject(this.broken);
    this.waiting.clear();
  }

  private take(chunk: Buffer): void {
    this.buffered = this.buffered.length === 0 ? chunk : Buffer.concat([this.buffered, chunk]);
    while (this.buffered.length >= 4) {
      const length = this.buffered.readUInt32BE(0);
      if (length < 1 || length > MAX_PACKET) return this.fail(new Error(`SFTP: the server sent a reply of ${length} bytes, more than any reply can be`));
      if (this.buffered.length < 4 + length) return;
      const packet = this.buffered.subarray(4, 4 + length);
      this.buffered = this.buffered.subarray(4 + length);
      const type = packet.readUInt8(0);
      if (type === VERSION && this.version) {
        const resolve = this.version;
        this.version = undefined;
        this.waiting.delete(0);
        resolve({ type, body: new Reader(packet.subarray(1)) });
        continue;
      }
      if (packet.length < 5) return this.fail(new Error('SFTP: a reply without a request id'));
      const id = packet.readUInt32BE(1);
      const waiter = this.waiting.get(id);
      if (!waiter) return this.fail(new Error(`SFTP: a reply to request ${id}, which nobody asked`));
      this.waiting.delete(id);
      waiter.resolve({ type, body: new Reader(packet.subarray(5)) });
    }
  }

  private request(name: string, type: number, fill: (packet: Packet) => Packet): Promise<Reply> {
    if (this.broken) return Promise.reject(this.broken);
    const id = this.nextId;
    this.nextId = (this.nextId % 0xffffffff) + 1;
    return new Promise<Reply>((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.input.write(fill(new Packet().byte(type).uint32(id)).framed());
    }).then((reply) => {
      if (reply.type !== STATUS) return reply;
      const code = reply.body.uint32();
      if (code === FX.OK) return reply;
      throw new SftpStatusError(code, safeMessage(reply.body), name);
    });
  }

  private expect(reply: Reply, type: number, name: string): Reader {
    if (reply.type !== type) throw new Error(`SFTP ${name}: the server answered with packet type ${reply.type}, not ${type}`);
    return reply.body;
  }

  /** Attributes of a path itself (a symbolic link is not followed). */
  async lstat(path: string): Promise<SftpAttrs> {
    return this.expect(await this.request(`lstat ${path}`, LSTAT, (p) => p.string(path)), ATTRS, 'lstat').attrs();
  }

  async fstat(handle: Buffer): Promise<SftpAttrs> {
    return this.expect(await this.request('fstat', FSTAT, (p) => p.string(handle)), ATTRS, 'fstat').attrs();
  }

  async open(path: string, flags: number, attrs: SftpAttrs = {}): Promise<Buffer> {
    return this.expect(await this.request(`open ${path}`, OPEN, (p) => p.string(path).uint32(flags).attrs(attrs)), HANDLE, 'open').bytes();
  }

  async close(handle: Buffer): Promise<void> {
    await this.request('close', CLOSE, (p) => p.string(handle));
  }

  /** Up to `length` bytes from `offset`; undefined at the end of the file. */
  async read(handle: Buffer, offset: number, length: number): Promise<Buffer | undefined> {
    try {
      const data = this.expect(await this.request('read', READ, (p) => p.string(handle).uint64(offset).uint32(length)), DATA, 'read').bytes();
      return Buffer.from(data);
    } catch (error) {
      if (error instanceof SftpStatusError && error.code === FX.EOF) return undefined;
      throw error;
    }
  }

  async write(handle: Buffer, offset: number, data: Buffer): Promise<void> {
    await this.request('write', WRITE, (p) => p.string(handle).uint64(offset).string(data));
  }

  async opendir(path: string): Promise<Buffer> {
    return this.expect(await this.request(`opendir ${path}`, OPENDIR, (p) => p.string(path)), HANDLE, 'opendir').bytes();
  }

  /** The next batch of a directory's entries; undefined at its end. */
  async readdir(handle: Buffer): Promise<SftpName[] | undefined> {
    try {
      const body = this.expect(await this.request('readdir', READDIR, (p) => p.string(handle)), NAME, 'readdir');
      const names: SftpName[] = [];
      for (let count = body.uint32(); count > 0; count -= 1) {
        const filename = body.string();
        body.bytes(); // the long name, for people
        names.push({ filename, attrs: body.attrs() });
      }
      return names;
    } catch (error) {
      if (error instanceof SftpStatusError && error.code === FX.EOF) return undefined;
      throw error;
    }
  }

  async mkdir(path: string, permissions = 0o755): Promise<void> {
    await this.request(`mkdir ${path}`, MKDIR, (p) => p.string(path).attrs({ permissions }));
  }

  async rmdir(path: string): Promise<void> {
    await this.request(`rmdir ${path}`, RMDIR, (p) => p.string(path));
  }

  async remove(path: string): Promise<void> {
    await this.request(`remove ${path}`, REMOVE, (p) => p.string(path));
  }

  /** rename(2): atomic, replacing `to` (OpenSSH's posix-rename extension). */
  async posixRename(from: string, to: string): Promise<void> {
    await this.request(`rename ${from}`, EXTENDED, (p) => p.string(POSIX_RENAME).string(from).string(to));
  }

  /** fsync(2) of an open file (OpenSSH's fsync extension). */
  async fsync(handle: Buffer): Promise<void> {
    await this.request('fsync', EXTENDED, (p) => p.string(FSYNC).string(handle));
  }
}

/** A status message, bounded and printable (the server's words reach logs). */
function safeMessage(body: Reader): string {
  try {
    return body.string().slice(0, 200).replace(/[^\x20-\x7e]/gu, '?');
  } catch {
    return '';
  }
}
