// Entry point of the one executable: picks the face (libvirt hook or CLI), runs it, and
// turns whatever it throws into an exit code — the one place exit codes are decided.
// Only light modules are imported statically; each face loads the rest on demand, so
// that the hook never loads yargs.
import { errorReport, exitCodeFor } from './errors.js';
import { chooseFace } from './face.js';

/** The hook's PATH: system tools only (AppArmor lets libvirt's hook run nothing under /usr/local). */
const HOOK_PATH = '/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * Guest data on this host is root's: every file either face or a tool it runs creates
 * (a top, a merge in progress) is private from its first byte. Directories that QEMU's
 * user must traverse are opened up explicitly (mkdirShared), files named by mode.
 */
const PRIVATE_UMASK = 0o077;

async function main(): Promise<number> {
  process.umask(PRIVATE_UMASK);
  const face = chooseFace(process.argv[1] ?? '', process.argv.slice(2));
  if (face.face === 'hook') {
    guardStdout();
    process.env.PATH = HOOK_PATH;
    const { runHook } = await import('../hooks/qemu.js');
    return runHook(face.hookArgs, { stdin: process.stdin, stderr: process.stderr, env: process.env });
  }
  const { runCli } = await import('./cli.js');
  const { runHook } = await import('../hooks/qemu.js');
  try {
    return await runCli(face.args, {
      stdout: process.stdout,
      stderr: process.stderr,
      env: process.env,
      runHook: async (args) => {
        guardStdout();
        return runHook(args, { stdin: process.stdin, stderr: process.stderr, env: process.env });
      },
    });
  } catch (error) {
    process.stderr.write(errorReport(error));
    return exitCodeFor(error);
  }
}

/**
 * The hook must never write to stdout: libvirt reads it back as domain XML for some
 * operations. Anything that still tries (a stray console.log in a dependency) goes to
 * stderr instead.
 */
function guardStdout(): void {
  process.stdout.write = process.stderr.write.bind(process.stderr) as typeof process.stdout.write;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    process.stderr.write(errorReport(error));
    process.exitCode = exitCodeFor(error);
  },
);
