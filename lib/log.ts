// Structured logging with swappable sinks. Diagnostics never go to stdout: stdout is
// for results in the CLI and is read back as domain XML by libvirt in some hook calls.
import { appendFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { escapeFileName } from './file-names.js';

export type Level = 'debug' | 'info' | 'warn' | 'error';

const RANK: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type Fields = Record<string, string | number | boolean | undefined>;

export interface LogEntry {
  time: Date;
  level: Level;
  message: string;
  fields: Fields;
}

export type Sink = (entry: LogEntry) => void;

/** A logger that hands each entry to every sink; sinks filter by level themselves. */
export class Logger {
  constructor(
    private readonly sinks: readonly Sink[],
    private readonly context: Fields = {},
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** A logger that adds `fields` to every entry. */
  with(fields: Fields): Logger {
    return new Logger(this.sinks, { ...this.context, ...fields }, this.now);
  }

  debug(message: string, fields: Fields = {}): void {
    this.write('debug', message, fields);
  }
  info(message: string, fields: Fields = {}): void {
    this.write('info', message, fields);
  }
  warn(message: string, fields: Fields = {}): void {
    this.write('warn', message, fields);
  }
  error(message: string, fields: Fields = {}): void {
    this.write('error', message, fields);
  }

  private write(level: Level, message: string, fields: Fields): void {
    const entry: LogEntry = { time: this.now(), level, message, fields: { ...this.context, ...fields } };
    for (const sink of this.sinks) sink(entry);
  }
}

/** Formats an entry as one line: time, level, message, then key=value fields. */
export function formatLogLine(entry: LogEntry): string {
  const fields = Object.entries(entry.fields)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key}=${formatValue(value)}`);
  return [entry.time.toISOString(), entry.level.toUpperCase().padEnd(5), entry.message, ...fields].join(' ');
}

function formatValue(value: string | number | boolean | undefined): string {
  const text = String(value);
  return /^[\w./:@+-]+$/u.test(text) ? text : JSON.stringify(text);
}

/** A sink for people: `kss: message` on a stream (stderr), at or above `minLevel`. */
export function streamSink(stream: { write(text: string): unknown }, minLevel: Level): Sink {
  return (entry) => {
    if (RANK[entry.level] < RANK[minLevel]) return;
    const prefix = entry.level === 'warn' || entry.level === 'error' ? `kss: ${entry.level}: ` : 'kss: ';
    stream.write(`${prefix}${entry.message}\n`);
  };
}

/**
 * A sink appending lines to a file, at or above `minLevel`. Appends are synchronous so
 * that a line written before a kill -9 is on disk, and so lines keep their order.
 * A log file that cannot be written never breaks the operation: the entry is dropped
 * and `onError` is told once.
 */
export function fileSink(path: string, minLevel: Level, onError: (error: unknown) => void = () => {}): Sink {
  let broken = false;
  return (entry) => {
    if (broken || RANK[entry.level] < RANK[minLevel]) return;
    try {
      appendFileSync(path, `${formatLogLine(entry)}\n`, { mode: 0o640 });
    } catch (error) {
      broken = true;
      onError(error);
    }
  };
}

/** The log file of one domain: the name is escaped so that any domain name is a safe file name. */
export function domainLogPath(logDir: string, domain: string): string {
  return join(logDir, `${escapeFileName(domain)}.log`);
}

/** Creates the log directory (owner and group only) if it is missing. */
export function ensureLogDir(logDir: string): void {
  mkdirSync(logDir, { recursive: true, mode: 0o750 });
}
