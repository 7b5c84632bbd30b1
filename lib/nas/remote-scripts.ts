// The shell scripts the SSH transport runs on the NAS, as strings. Pure. Every path is
// quoted; each script starts by entering the NAS root. They need a POSIX sh, GNU
// coreutils (stat, truncate, tail, sync) and findutils; openssl (fast SHA-256; else
// sha256sum) and zstd are used when present.
//
// Exit statuses the transport reads: 0 done, 3 "no such file", 4 "the NAS root is
// missing", 5 "no zstd" (a compressed download); anything else is a failure whose stderr is shown.
import { shellQuote as q } from '../shell-quote.js';
import { OWNER_MAX_BYTES } from './transport.js';

export const MISSING = 3;
export const NO_ROOT = 4;
/** A download asked to be compressed, and the NAS has no zstd. */
export const NO_ZSTD = 5;
/** What an upload's receiving end answers, reading nothing, when asked to decompress without zstd. */
export const NO_ZSTD_REPLY = 'no-zstd';
/** The first line of a script that needs zstd on the NAS: without it, `refusal`. */
const needZstd = (refusal: string) => `command -v zstd >/dev/null 2>&1 || { ${refusal}; }`;

/**
 * The line a script writes on stderr every second while it works on a stream without
 * reading it (ssh-command.ts remoteNote reads it): the stream's stall deadline counts
 * it as activity, so that a slow read-back or flush is not taken for a dead NAS.
 */
export const ALIVE_NOTE = 'kss-alive';

/**
 * `beat` starts writing ALIVE_NOTE in the background, `quiet` stops it; the script's
 * exit stops it too (trap), since the loop holds stderr and so the SSH session open. Its
 * `sleep` gets no stderr: one left over for a second must not hold the session either.
 */
const HEARTBEAT = [
  `beat() { while :; do echo ${ALIVE_NOTE} >&2; sleep 1 >/dev/null 2>&1; done </dev/null >/dev/null & beating=$!; }`,
  'quiet() { [ -z "${beating:-}" ] || kill "$beating" 2>/dev/null; beating=; }',
  'trap quiet EXIT',
];

function inRoot(root: string, body: string): string {
  return `cd -- ${q(root)} 2>/dev/null || { printf 'the NAS directory %s does not exist\\n' ${q(root)} >&2; exit ${NO_ROOT}; }\n${body}`;
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash > 0 ? path.slice(0, slash) : '.';
}

/** Prints a file's first `maxBytes` + 1 bytes (more tells the reader it is too large), or exits MISSING. */
export function readFileScript(root: string, path: string, maxBytes: number): string {
  return inRoot(root, `[ -f ${q(path)} ] || exit ${MISSING}\nhead -c ${maxBytes + 1} -- ${q(path)}`);
}


/** Writes stdin to a file atomically and durably. */
export function writeFileScript(root: string, path: string, temp: string): string {
  const dir = parentOf(path);
  return inRoot(
    root,
    [
      'set -e',
      `mkdir -p -- ${q(dir)}`,
      `cat > ${q(temp)}`,
      `sync -- ${q(temp)}`,
      `mv -f -T -- ${q(temp)} ${q(path)}`,
      `sync -- ${q(dir)}`,
    ].join('\n'),
  );
}

/** Prints "size mtime-seconds type name" (NUL-terminated) for one path, or exits MISSING. */
export function statScript(root: string, path: string): string {
  return inRoot(root, `[ -e ${q(path)} ] || exit ${MISSING}\nfind ${q(path)} -maxdepth 0 -printf '%s %T@ %y %f\\0'`);
}

/** The same for every entry of a directory; nothing when it does not exist. */
export function listScript(root: string, dir: string): string {
  return inRoot(root, `[ -d ${q(dir)} ] || exit 0\nfind ${q(dir)} -mindepth 1 -maxdepth 1 -printf '%s %T@ %y %f\\0'`);
}

export function removeScript(root: string, path: string): string {
  return inRoot(root, `rm -rf -- ${q(path)}`);
}

/** Renames (replacing the target), or exits MISSING when the source does not exist. */
export function renameScript(root: string, from: string, to: string): string {
  return inRoot(root, `[ -e ${q(from)} ] || exit ${MISSING}\nmv -f -T -- ${q(from)} ${q(to)}`);
}

/**
 * The lock-taking lines shared by mkdirExclusive and the compare-and-swap: mkdir is
 * atomic, so exactly one caller creates the directory. A caller that does not prints
 * "exists AGE_SECONDS" (the newest activity by the NAS's clock), then the owner file,
 * and exits 0; the one that does runs `then` (the owner file is its to write).
 */
function takeLockLines(path: string, ownerName: string, then: string[]): string[] {
  const owner = q(`${path}/${ownerName}`);
  return [
    `mkdir -p -- ${q(parentOf(path))} || exit 1`,
    `if ! mkdir -- ${q(path)} 2>/dev/null; then`,
    // Gone again in between: a holder just released it (age 0: try again soon).
    `  m=$(stat -c %Y -- ${owner} 2>/dev/null || stat -c %Y -- ${q(path)} 2>/dev/null || date +%s) || exit 1`,
    '  echo "exists $(( $(date +%s) - m ))"',
    `  head -c ${OWNER_MAX_BYTES} -- ${owner} 2>/dev/null`,
    '  exit 0',
    'fi',
    ...then,
  ];
}

/** Creates a lock directory and writes stdin into its owner file (see takeLockLines). */
export function mkdirExclusiveScript(root: string, path: string, ownerName: string): string {
  const owner = q(`${path}/${ownerName}`);
  return inRoot(root, takeLockLines(path, ownerName, [`cat > ${owner} && sync -- ${owner} && echo created`]).join('\n'));
}

/**
 * A compare-and-swap of a small file in one round trip: takes the lock (as
 * mkdirExclusive, the owner data given here), then prints "missing PATH" when a
 * required path does not exist, "changed" when `path` no longer hashes to
 * `expectedSha256` ("none": must not exist), or removes the files in `remove` and
 * replaces it with stdin (temp file, sync, rename, sync the directory) and prints
 * "replaced". The lock is removed after,
 * if it still holds our owner data (it could only have been broken as stale).
 */
export function replaceIfUnchangedScript(
  root: string,
  path: string,
  temp: string,
  guard: { expectedSha256: string | null; required: string[]; remove?: string[]; lockPath: string; ownerName: string; ownerData: string },
): string {
  const owner = q(`${guard.lockPath}/${guard.ownerName}`);
  const mine = q(guard.ownerData);
  return inRoot(
    root,
    takeLockLines(guard.lockPath, guard.ownerName, [
      `printf %s ${mine} > ${owner} || { rm -rf -- ${q(guard.lockPath)}; exit 1; }`,
      `unlock() { [ "$(cat -- ${owner} 2>/dev/null)" = ${mine} ] && rm -rf -- ${q(guard.lockPath)}; }`,
      ...guard.required.map((required) => `[ -e ${q(required)} ] || { unlock; printf 'missing %s\\n' ${q(required)}; exit 0; }`),
      `if [ -f ${q(path)} ]; then`,
      '  if command -v openssl >/dev/null 2>&1; then hasher="openssl dgst -sha256 -r"; else hasher=sha256sum; fi',
      `  current=$($hasher < ${q(path)}) || { unlock; exit 1; }`,
      '  current=${current%% *}',
      'else',
      '  current=none',
      'fi',
      `[ "$current" = ${q(guard.expectedSha256 ?? 'none')} ] || { unlock; echo changed; exit 0; }`,
      ...((guard.remove ?? []).length > 0 ? [`rm -f -- ${(guard.remove ?? []).map(q).join(' ')} || { unlock; exit 1; }`] : []),
      `{ mkdir -p -- ${q(parentOf(path))} && cat > ${q(temp)} && sync -- ${q(temp)} && mv -f -T -- ${q(temp)} ${q(path)} && sync -- ${q(parentOf(path))}; } || { rm -f -- ${q(temp)}; unlock; exit 1; }`,
      'unlock',
      'echo replaced',
    ]).join('\n'),
  );
}

/**
 * Before an upload: "published" when the target exists; otherwise creates the
 * directories and prints "part SIZE NAME zstd=0|1", NAME being the largest partial
 * upload (`<partPrefix>` or `<partPrefix>.*`) left by an earlier attempt ("-" and 0
 * when there is none).
 */
export function prepareUploadScript(root: string, partPrefix: string, target: string): string {
  return inRoot(
    root,
    [
      `[ -e ${q(target)} ] && { echo published; exit 0; }`,
      `mkdir -p -- ${q(parentOf(partPrefix))} ${q(parentOf(target))} || exit 1`,
      'best=-; size=0',
      `for f in ${q(partPrefix)} ${q(partPrefix)}.*; do`,
      '  [ -f "$f" ] || continue',
      '  s=$(stat -c %s -- "$f") || continue',
      '  if [ "$s" -gt "$size" ] || [ "$best" = - ]; then best=$f; size=$s; fi',
      'done',
      'if command -v zstd >/dev/null 2>&1; then z=1; else z=0; fi',
      'printf \'part %s %s zstd=%s\\n\' "$size" "$best" "$z"',
    ].join('\n'),
  );
}

/**
 * The receiving end of one upload attempt. It first claims its own file,
 * `<partPrefix>.<token>`: the partial upload `claim` renamed (when resuming from
 * `offset`) or a new one. A killed earlier attempt may still run on the NAS for a
 * moment; renaming keeps it from ever touching this attempt's file by name, and the
 * hash below catches anything it might still append. Then it cuts the file to
 * `offset`, appends stdin (decompressed when `compressed`), and hashes the whole file
 * on the way: the kept prefix is read back on the NAS, the rest hashed as written.
 * While it reads the prefix back, and while it flushes and publishes after the last
 * byte, it reads no input for a while (for a large layer on a slow disk, longer than a
 * stall deadline): it says it is alive then (ALIVE_NOTE), and only then, so that during
 * the data itself only moving bytes count.
 *  - complete and matching: read-only, published under `target`, prints "published";
 *  - shorter than `size` (the sender stopped): kept for resuming, prints "short N";
 *  - complete but not matching: removed, prints "mismatch HASH N".
 */
export function receiveUploadScript(
  root: string,
  opts: { partPrefix: string; claim: string | undefined; token: string; target: string; offset: number; size: number; hash: string; compressed: boolean },
): string {
  const mine = q(`${opts.partPrefix}.${opts.token}`);
  const target = q(opts.target);
  const decompress = opts.compressed ? 'zstd -dcq' : 'cat';
  const claim =
    opts.offset > 0 && opts.claim !== undefined
      ? `mv -T -- ${q(opts.claim)} ${mine} 2>/dev/null && truncate -s ${opts.offset} -- ${mine} || { echo "the partial upload disappeared" >&2; exit 1; }`
      : `: > ${mine} || exit 1`;
  const readBack = opts.offset > 0 ? `beat; cat -- ${mine}; quiet; ` : '';
  return inRoot(
    root,
    [
      ...(opts.compressed ? [needZstd(`echo ${NO_ZSTD_REPLY}; exit 0`)] : []),
      ...HEARTBEAT,
      claim,
      'if command -v openssl >/dev/null 2>&1; then hasher="openssl dgst -sha256 -r"; else hasher=sha256sum; fi',
      `sum=$( { ${readBack}${decompress} | tee -a -- ${mine}; } | $hasher ) || exit 1`,
      'sum=${sum%% *}',
      'beat',
      `sync -- ${mine} || exit 1`,
      `got=$(stat -c %s -- ${mine}) || exit 1`,
      `if [ "$got" -lt ${opts.size} ]; then echo "short $got"; exit 0; fi`,
      `if [ "$got" -ne ${opts.size} ] || [ "$sum" != ${q(opts.hash)} ]; then rm -f -- ${mine}; echo "mismatch $sum $got"; exit 0; fi`,
      `chmod 440 -- ${mine}`,
      `ln -- ${mine} ${target} 2>/dev/null || [ -e ${target} ] || mv -T -- ${mine} ${target} || exit 1`,
      `rm -f -- ${q(opts.partPrefix)} ${q(opts.partPrefix)}.*`,
      `sync -- ${q(parentOf(opts.target))}`,
      'echo published',
    ].join('\n'),
  );
}

/** Removes every partial upload `<partPrefix>.*`. */
export function removePartsScript(root: string, partPrefix: string): string {
  return inRoot(root, `rm -f -- ${q(partPrefix)} ${q(partPrefix)}.*`);
}

/** Before a download: "size SIZE zstd=0|1", or exits MISSING. */
export function prepareDownloadScript(root: string, source: string): string {
  return inRoot(
    root,
    [
      `[ -f ${q(source)} ] || exit ${MISSING}`,
      `size=$(stat -c %s -- ${q(source)}) || exit 1`,
      'if command -v zstd >/dev/null 2>&1; then z=1; else z=0; fi',
      'echo "size $size zstd=$z"',
    ].join('\n'),
  );
}

/** Sends a file from `offset` on, compressed with zstd when asked. */
export function sendDownloadScript(root: string, source: string, offset: number, compressed: boolean): string {
  const compress = compressed ? ' | zstd -1 -T0 -cq' : '';
  const zstd = compressed ? `${needZstd(`exit ${NO_ZSTD}`)}\n` : '';
  return inRoot(root, `[ -f ${q(source)} ] || exit ${MISSING}\n${zstd}tail -c +${offset + 1} -- ${q(source)}${compress}`);
}
