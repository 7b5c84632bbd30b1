// Typed errors and the one place that turns any thrown value into an exit code and a
// message. Every user-facing failure says what failed, what it means, and the fix.

/** The exit codes of the CLI and the hook; README.md documents this table. */
export const ExitCode = {
  ok: 0,
  usage: 2,
  config: 3,
  tool: 4,
  diskState: 5,
  integrity: 6,
  locked: 7,
  nasUnreachable: 8,
  conflict: 9,
  nasFull: 10,
  leaseHeld: 11,
  definitionChanged: 12,
  internal: 70,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/** What each exit code means, for the README's table and the man page's EXIT STATUS. */
export const EXIT_CODE_MEANINGS: Readonly<Record<ExitCodeValue, string>> = {
  0: 'success',
  2: 'the command line is wrong (`kss --help`), or the VM is not as the command needs it (running, managed-saved, started while the command waited), or this host is in the way of `kss clone` (a disk outside its storage pools, the UUID taken)',
  3: 'the configuration file is missing or invalid',
  4: 'an external program (qemu-img, ssh, …) is missing or failed',
  5: 'a disk or its chain is not in the shape the operation needs',
  6: 'integrity: bytes do not match their checksum, qemu-img check found corruption, the NAS manifest is damaged, or `kss clone` refuses the definition on the NAS',
  7: "another kvm-snapshot-sync process holds the domain's lock (here or on the NAS)",
  8: 'the NAS cannot be reached (network, ssh, host key, missing directory)',
  9: "conflict: the NAS moved on since this host's state; nothing was overwritten",
  10: 'the NAS is full; nothing was published',
  11: 'another host has the VM checked out (the lease)',
  12: "a start was refused because the VM's definition changed on another host: it is being put in place here; start again",
  70: 'internal error: a bug; the message asks you to report it',
};

export interface KssErrorOptions {
  /** What the person can do about it, ideally a command to run. */
  remedy?: string;
  cause?: unknown;
}

/** Base of every failure that is not a bug: it carries its exit code and a remedy. */
export abstract class KssError extends Error {
  abstract readonly exitCode: ExitCodeValue;
  readonly remedy: string | undefined;

  constructor(message: string, options: KssErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.remedy = options.remedy;
  }
}

/** The command line was wrong. */
export class UsageError extends KssError {
  readonly exitCode = ExitCode.usage;
}

/** The configuration file is missing, unreadable or invalid. */
export class ConfigError extends KssError {
  readonly exitCode = ExitCode.config;
}

/** An external program (qemu-img, ssh, …) could not run or failed. */
export class ToolError extends KssError {
  readonly exitCode = ExitCode.tool;
  constructor(
    message: string,
    readonly command: string,
    readonly status: number | undefined,
    readonly stderrTail: string,
    options: KssErrorOptions = {},
  ) {
    super(message, options);
  }
}

/** A disk or its chain is not in the shape the operation needs. */
export class DiskStateError extends KssError {
  readonly exitCode = ExitCode.diskState;
}

/** Bytes are not what their name or checksum says: corruption or tampering. */
export class IntegrityError extends KssError {
  readonly exitCode = ExitCode.integrity;
}

/** Another kss process holds the lock this operation needs. */
export class LockedError extends KssError {
  readonly exitCode = ExitCode.locked;
}

/** The NAS cannot be reached (network down, ssh refused, mount missing) within its deadline. */
export class NasUnreachableError extends KssError {
  readonly exitCode = ExitCode.nasUnreachable;
}

/** The NAS moved on while we worked from an older state: nothing was overwritten. */
export class ConflictError extends KssError {
  readonly exitCode = ExitCode.conflict;
}

/** The NAS has no room for what we send: nothing was published. */
export class NasFullError extends KssError {
  readonly exitCode = ExitCode.nasFull;
}

/** Another host has the VM checked out. */
export class LeaseHeldError extends KssError {
  readonly exitCode = ExitCode.leaseHeld;
}

/** The VM's definition changed on another host, and is being put in place here: start again. */
export class DefinitionChangedError extends KssError {
  readonly exitCode = ExitCode.definitionChanged;
}

/** Decides the exit code for anything thrown: typed failures keep theirs, the rest are bugs. */
export function exitCodeFor(error: unknown): ExitCodeValue {
  return error instanceof KssError ? error.exitCode : ExitCode.internal;
}

/**
 * The line(s) the CLI and the hook write to stderr for a failure, `kss: error: …` in both
 * faces: the README's Troubleshooting quotes what virsh start shows after the hook.
 */
export function errorReport(error: unknown): string {
  return `kss: error: ${describeError(error)}\n`;
}

/** The text shown to a person for a failure: message, cause, remedy; bugs get their stack. */
export function describeError(error: unknown): string {
  if (error instanceof KssError) {
    const lines = [error.message];
    if (error instanceof ToolError && error.stderrTail) lines.push(indent(error.stderrTail));
    if (error.remedy) lines.push(`To fix: ${error.remedy}`);
    return lines.join('\n');
  }
  const detail = error instanceof Error ? (error.stack ?? error.message) : String(error);
  return `internal error (a bug in kvm-snapshot-sync; please report it with this text):\n${indent(detail)}`;
}

function indent(text: string): string {
  return text
    .split('\n')
    .map((line) => `  ${line}`)
    .join('\n');
}
