// What every command writes to: results on stdout, diagnostics on stderr.

export interface Output {
  stdout: { write(data: string | Uint8Array): unknown };
  stderr: { write(data: string | Uint8Array): unknown };
}

/** Prints a value as indented JSON, for --json. */
export function printJson(out: Output, value: unknown): void {
  out.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
