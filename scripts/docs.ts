// Writes what the package and install.sh put beside the executable, all from the command
// table: the man page kss(1) and the bash and zsh completion scripts. Run by build.mjs.
//
//   node --import tsx scripts/docs.ts DIST_DIR
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { bashCompletion, zshCompletion } from '../lib/completion.js';
import { manPage } from '../lib/man-page.js';
import { VERSION } from '../lib/version.js';

const dist = process.argv[2];
if (dist === undefined) throw new Error('usage: scripts/docs.ts DIST_DIR');
mkdirSync(join(dist, 'completion'), { recursive: true });
writeFileSync(join(dist, 'kss.1'), manPage(VERSION));
writeFileSync(join(dist, 'completion', 'kss'), bashCompletion());
writeFileSync(join(dist, 'completion', '_kss'), zshCompletion());
