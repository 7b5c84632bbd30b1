// The program's version: put into the bundle by the build (scripts/build.mjs), read from
// package.json when running from source (tests).
import { readFileSync } from 'node:fs';

declare const __KSS_VERSION__: string | undefined;

export const VERSION: string =
  typeof __KSS_VERSION__ === 'string'
    ? __KSS_VERSION__
    : (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
