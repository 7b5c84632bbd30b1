// Builds the Debian package dist/kvm-snapshot-sync_VERSION_amd64.deb from the built
// executable, its man page and completion (npm run build), with dpkg-deb. Where each
// file goes, and what the maintainer scripts do, is packaging/layout.sh (shared with
// install.sh): its text is put into each maintainer script, so that a purge, which runs
// after the package's files are gone, still has it.
//
//   node scripts/package.mjs [--version V] [--executable FILE] [--out FILE]
//
// The options are for tests of an upgrade: another version from another build.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { parseArgs } from 'node:util';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
const { values } = parseArgs({ options: { version: { type: 'string' }, executable: { type: 'string' }, out: { type: 'string' } } });
const version = values.version ?? pkg.version;
const executable = values.executable ?? join(dist, 'kvm-snapshot-sync');
const out = values.out ?? join(dist, `kvm-snapshot-sync_${version}_amd64.deb`);
const layoutScript = readFileSync(join(root, 'packaging', 'layout.sh'), 'utf8');

function fail(message) {
  console.error(`package failed: ${message}`);
  process.exit(1);
}

/** The layout under /usr, as packaging/layout.sh says: each variable's value, an array's items joined by spaces. */
const layout = Object.fromEntries(
  execFileSync('bash', ['-c', 'source packaging/layout.sh; layout_under /usr; for v in KSS BIN_DIR MAN1_DIR; do echo "$v=${!v}"; done; for a in PACKAGES COMMANDS DOC_FILES DOC_LINKS; do declare -n items=$a; echo "$a=${items[*]}"; done'], {
    cwd: root,
    encoding: 'utf8',
  })
    .trim()
    .split('\n')
    .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]),
);
/** An array of `a:b` items as [a, b] pairs. */
const pairs = (items) => items.split(' ').map((item) => [item.slice(0, item.indexOf(':')), item.slice(item.indexOf(':') + 1)]);
const docFiles = pairs(layout.DOC_FILES);
const docLinks = pairs(layout.DOC_LINKS);

for (const file of [executable, ...docFiles.map(([source]) => join(dist, source))]) {
  if (!existsSync(file)) fail(`${file} is missing: run npm run build first`);
}

/**
 * The shared libraries the pinned Node binary needs, and the packages that give them at
 * the versions its symbols need (GLIBC_2.28, GLIBCXX_3.4.21). A Node that needs another
 * library fails the build here rather than making a package that cannot run.
 */
const LIBRARY_PACKAGES = {
  'libc.so.6': 'libc6 (>= 2.28)',
  'libm.so.6': 'libc6 (>= 2.28)',
  'libdl.so.2': 'libc6 (>= 2.28)',
  'libpthread.so.0': 'libc6 (>= 2.28)',
  'ld-linux-x86-64.so.2': 'libc6 (>= 2.28)',
  'libstdc++.so.6': 'libstdc++6 (>= 5.2)',
  'libgcc_s.so.1': 'libgcc-s1',
};
const needed = [...execFileSync('objdump', ['-p', executable], { encoding: 'utf8' }).matchAll(/^\s*NEEDED\s+(\S+)$/gmu)].map((m) => m[1]);
const unknown = needed.filter((library) => !(library in LIBRARY_PACKAGES));
if (unknown.length > 0) fail(`the executable needs ${unknown.join(', ')}: add the package that gives it to LIBRARY_PACKAGES`);
const depends = [...new Set([...needed.map((library) => LIBRARY_PACKAGES[library]), ...layout.PACKAGES.split(' ')])];

process.umask(0o022); // the directories mkdirSync makes are 0755 whatever the builder's umask
const stage = mkdtempSync(join(tmpdir(), 'kss-package-'));
chmodSync(stage, 0o755); // the package's ./, which dpkg compares with / itself
const inStage = (path) => join(stage, path);
const put = (path, data, mode = 0o644) => {
  mkdirSync(dirname(inStage(path)), { recursive: true });
  writeFileSync(inStage(path), data);
  chmodSync(inStage(path), mode);
};
const link = (path, target) => {
  mkdirSync(dirname(inStage(path)), { recursive: true });
  symlinkSync(relative(dirname(path), target), inStage(path));
};
const gzip = (data) => gzipSync(data, { level: 9 }); // no name, no time: the same bytes each build

try {
  mkdirSync(inStage(dirname(layout.KSS)), { recursive: true });
  copyFileSync(executable, inStage(layout.KSS));
  chmodSync(inStage(layout.KSS), 0o755);
  for (const name of layout.COMMANDS.split(' ')) link(`${layout.BIN_DIR}/${name}`, layout.KSS);
  const isManPage = (path) => dirname(path) === layout.MAN1_DIR;
  for (const [source, target] of docFiles) {
    const data = readFileSync(join(dist, source));
    if (isManPage(target)) put(`${target}.gz`, gzip(data));
    else put(target, data);
  }
  for (const [path, target] of docLinks) {
    if (isManPage(target)) link(`${path}.gz`, `${target}.gz`);
    else link(path, target);
  }
  const doc = '/usr/share/doc/kvm-snapshot-sync';
  put(`${doc}/README.md.gz`, gzip(readFileSync(join(root, 'README.md'))));
  put(`${doc}/copyright`, readFileSync(join(root, 'packaging', 'copyright')));
  put('/usr/share/lintian/overrides/kvm-snapshot-sync', readFileSync(join(root, 'packaging', 'lintian-overrides')));
  put(`${doc}/changelog.gz`, gzip(`kvm-snapshot-sync (${version}) unstable; urgency=medium\n\n  * Built from the repository; see the README.\n\n -- ${maintainer()}  ${debianDate()}\n`));

  for (const script of ['postinst', 'prerm', 'postrm']) {
    const body = readFileSync(join(root, 'packaging', script), 'utf8');
    put(`DEBIAN/${script}`, maintainerScript(script, body), 0o755);
  }
  const installedKiB = Number(execFileSync('du', ['-sk', '--apparent-size', '--exclude=DEBIAN', stage], { encoding: 'utf8' }).split('\t')[0]);
  put(
    'DEBIAN/control',
    [
      'Package: kvm-snapshot-sync',
      `Version: ${version}`,
      'Architecture: amd64',
      `Maintainer: ${maintainer()}`,
      `Installed-Size: ${installedKiB}`,
      `Depends: ${depends.join(', ')}`,
      'Recommends: libvirt-daemon-system, libnotify-bin',
      'Section: admin',
      'Priority: optional',
      'Description: keeps KVM virtual machines in sync between hosts through a NAS',
      ' kvm-snapshot-sync is a libvirt hook and the command kss. Before a managed',
      ' domain starts it brings the newest state from the NAS and puts a fresh qcow2',
      ' overlay on its disks; after it stops, the overlay is sealed, compacted and',
      ' pushed. The disks, UEFI variables, TPM state and definition travel.',
      '',
    ].join('\n'),
  );
  mkdirSync(dirname(out), { recursive: true });
  execFileSync('dpkg-deb', ['--root-owner-group', '-Zgzip', '--build', stage, out], { stdio: ['ignore', 'ignore', 'inherit'] });
  console.error(`built ${out}`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}

function maintainer() {
  return 'kvm-snapshot-sync maintainers <maintainers@users.noreply.github.com>';
}

/** RFC 5322 date, as a Debian changelog wants it: the time of the commit built, so that a build is repeatable. */
function debianDate() {
  try {
    return execFileSync('git', ['log', '-1', '--format=%aD'], { cwd: root, encoding: 'utf8' }).trim();
  } catch {
    return new Date(0).toUTCString().replace('GMT', '+0000');
  }
}

/** A maintainer script: the shared layout, then what this script does. */
function maintainerScript(name, body) {
  return `#!/bin/bash\n# Generated by scripts/package.mjs: packaging/layout.sh, then packaging/${name}.\nset -euo pipefail\nSAY_AS=kvm-snapshot-sync\n\n${layoutScript}\nlayout_under /usr\n\n${body}`;
}
