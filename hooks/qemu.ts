// The libvirt hook: /etc/libvirt/hooks/qemu <domain> <op> <subop> <extra>, domain XML
// on stdin. A thin, total, fast dispatcher:
//   - calls not in the table (hooks/dispatch.ts) exit 0 before reading stdin;
//   - domains without our <metadata> element exit 0 before an XML parser is loaded;
//   - nothing is ever written to stdout (libvirt reads it back as domain XML for
//     migrate/restore); diagnostics go to stderr and to the domain's log file;
//   - a failure exits non-zero only where that aborts a start (prepare).
import { readConfig, configPath } from '../lib/config.js';
import type { DomainRecord } from '../lib/domain-xml.js';
import { describeError, errorReport, exitCodeFor } from '../lib/errors.js';
import { Logger, domainLogPath, ensureLogDir, fileSink, streamSink } from '../lib/log.js';
import { mentionsNamespace } from '../lib/namespace.js';
import { findHookEntry } from './dispatch.js';

export interface HookIo {
  stdin: NodeJS.ReadableStream & { isTTY?: boolean };
  stderr: { write(text: string): unknown };
  env: NodeJS.ProcessEnv;
}

/** Runs one hook call and returns the exit code. */
export async function runHook(args: readonly string[], io: HookIo): Promise<number> {
  const [name, op, subop, extra = '-'] = args;
  const entry = findHookEntry(op, subop);
  if (name === undefined || op === undefined || subop === undefined || entry === undefined) return 0;

  const xml = entry.internal ? '' : await readAll(io.stdin);
  if (!entry.internal && !mentionsNamespace(xml)) return 0;

  let log: Logger | undefined;
  try {
    let domain: DomainRecord = { name, uuid: undefined, managed: true, disks: [], nvram: undefined, tpmEmulator: false, tpmSecret: undefined };
    if (!entry.internal) {
      const { parseDomainXml } = await import('../lib/domain-xml.js');
      domain = await parseDomainXml(xml);
      if (!domain.managed) return 0;
    }

    const config = await readConfig(configPath(undefined, io.env));
    ensureLogDir(config.logDir);
    const stderrSink = streamSink(io.stderr, 'warn');
    log = new Logger([
      fileSink(domainLogPath(config.logDir, name), 'info', (error) =>
        io.stderr.write(`kss: warning: cannot write the log file: ${String(error)}\n`),
      ),
      (logEntry) => (logEntry.level === 'warn' ? stderrSink(logEntry) : undefined),
    ]).with({ domain: name, op: `${op}/${subop}`, pid: process.pid });

    log.info('hook call', { extra, startupMs: Math.round(process.uptime() * 1000) });
    const handler = await entry.load();
    await handler({ domain, xml, op, subop, extra, config, log });
    log.info('hook call done');
    return 0;
  } catch (error) {
    log?.error(describeError(error).replaceAll('\n', ' | '));
    io.stderr.write(errorReport(error));
    return entry.failureAbortsStart ? exitCodeFor(error) : 0;
  }
}

async function readAll(stream: HookIo['stdin']): Promise<string> {
  if (stream.isTTY) return '';
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
  return Buffer.concat(chunks).toString('utf8');
}
