// The command line (`kvm-snapshot-sync`, `kss`): wiring only, and the only importer of
// yargs. Each command is a plain async function in lib/commands/, loaded when it runs.
import yargs from 'yargs';
import type { Output } from './commands/output.js';
import { configPath } from './config.js';
import { UsageError } from './errors.js';
import { VERSION } from './version.js';

export interface CliIo extends Output {
  env: NodeJS.ProcessEnv;
  /** Runs the hook face, for `kss hook qemu …` written after global options. */
  runHook: (args: string[]) => Promise<number>;
}

/** Parses the arguments, runs the command, and returns the exit code (errors are thrown). */
export async function runCli(args: string[], io: CliIo): Promise<number> {
  let exitCode = 0;
  const context = (flag: string | undefined) => ({ ...io, configFile: configPath(flag, io.env) });
  const cli = yargs(args)
    // --no-sync and --no-push are flags of their own, not "not --sync".
    .parserConfiguration({ 'boolean-negation': false })
    .scriptName('kss')
    .usage('kvm-snapshot-sync (kss): keeps KVM virtual machines in sync between hosts through a NAS.\n\nUsage: $0 <command> [options]')
    .option('config', {
      type: 'string',
      describe: 'configuration file (default: $KSS_CONFIG, then /etc/kvm-snapshot-sync/config.json)',
    })
    .command(
      'config',
      'show the configuration in effect, validated, defaults filled in',
      (y) =>
        y.option('json', { type: 'boolean', default: false, describe: 'print JSON' }).command(
          'set <settings..>',
          'set keys of the configuration file (KEY=VALUE ...), creating it if needed; nothing is written unless the result is valid',
          (z) => z.positional('settings', { type: 'string', array: true, demandOption: true }),
          async (argv) => (await import('./commands/config.js')).setConfig({ file: configPath(argv.config, io.env), settings: argv.settings as string[] }, io),
        ),
      async (argv) => (await import('./commands/config.js')).showConfig({ file: configPath(argv.config, io.env), json: argv.json }, io),
    )
    .command(
      'chain <disk>',
      "show a disk image's backing chain, top first",
      (y) =>
        y
          .positional('disk', { type: 'string', demandOption: true, describe: 'path of the disk image' })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => (await import('./commands/chain.js')).showChain({ disk: argv.disk, json: argv.json }, io),
    )
    .command(
      'check <disk>',
      'check every image of a disk chain for corruption (qemu-img check)',
      (y) =>
        y
          .positional('disk', { type: 'string', demandOption: true, describe: 'path of the disk image' })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => (await import('./commands/chain.js')).checkChain({ disk: argv.disk, json: argv.json }, io),
    )
    .command(
      'enable <domain>',
      'take a shut-off domain under management on this host (its disks become the first generation)',
      (y) => y.positional('domain', { type: 'string', demandOption: true }),
      async (argv) => (await import('./commands/domain.js')).enableCommand({ domain: argv.domain }, context(argv.config)),
    )
    .command(
      'clone <domain>',
      'on another host: define the domain from the NAS, with its newest disks, ready for virsh start',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('dir', { type: 'string', describe: "put the disks in this directory (default: the paths of the host that enabled it, which must be in one of this host's storage pools)" }),
      async (argv) => (await import('./commands/clone.js')).cloneCommand({ domain: argv.domain, dir: argv.dir }, context(argv.config)),
    )
    .command(
      'delta <domain>',
      'what would move between this host and the NAS, in bytes, each way',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => (await import('./commands/status.js')).deltaCommand({ domain: argv.domain, json: argv.json }, context(argv.config)),
    )
    .command(
      'disable <domain>',
      'take a shut-off domain out of management here, losing nothing: its disks become standalone images again',
      (y) => y.positional('domain', { type: 'string', demandOption: true }),
      async (argv) => (await import('./commands/domain.js')).disableCommand({ domain: argv.domain }, context(argv.config)),
    )
    .command(
      'doctor',
      'check the configuration, the NAS, the tools, the hook, space and the image directories; each problem with its fix',
      (y) => y,
      async (argv) => (await import('./commands/doctor.js')).doctorCommand(context(argv.config)),
    )
    .command(
      'status [domain]',
      'where each managed domain stands: synced, behind, ahead (push pending), busy, conflict, checked out by another host, offline',
      (y) =>
        y
          .positional('domain', { type: 'string', describe: 'one domain (default: every domain managed here)' })
          .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => (await import('./commands/status.js')).statusCommand({ domain: argv.domain, json: argv.json }, context(argv.config)),
    )
    .command(
      'wait <domain>',
      'wait until no sync work runs for the domain; exit 0 when the NAS has everything of this host and the VM is not checked out here',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('timeout', { type: 'number', default: 3600, describe: 'seconds to wait for work in flight' }),
      async (argv) => (await import('./commands/status.js')).waitCommand({ domain: argv.domain, timeoutSeconds: argv.timeout }, context(argv.config)),
    )
    .command(
      'push <domain>',
      'push what this host has and the NAS lacks, with progress (the work a stop does in the background); the VM must be shut off',
      (y) => y.positional('domain', { type: 'string', demandOption: true }),
      async (argv) => (await import('./commands/lifecycle.js')).pushCommand({ domain: argv.domain }, context(argv.config)),
    )
    .command(
      'definition <domain>',
      "show the domain's definition as it travels (the portable part) and this host's own part, side by side",
      (y) => y.positional('domain', { type: 'string', demandOption: true }).option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
      async (argv) => (await import('./commands/definition.js')).definitionCommand({ domain: argv.domain, json: argv.json }, context(argv.config)),
    )
    .command(
      'pull <domain>',
      "put the NAS's newest definition of the domain in place and fetch its newest generation, with progress, so that the next start has nothing to download",
      (y) => y.positional('domain', { type: 'string', demandOption: true }),
      async (argv) => (await import('./commands/lifecycle.js')).pullCommand({ domain: argv.domain }, context(argv.config)),
    )
    .command(
      'log <domain>',
      "show the domain's hook and background log",
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('follow', { alias: 'f', type: 'boolean', default: false, describe: 'keep printing new lines' }),
      async (argv) => (await import('./commands/domain.js')).logCommand({ domain: argv.domain, follow: argv.follow }, context(argv.config)),
    )
    .command(
      'start <domain>',
      'start a VM (virsh start) with one-shot sync options',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('no-sync', { type: 'boolean', default: false, describe: 'start without the NAS, this once' })
          .option('steal-lease', { type: 'boolean', default: false, describe: 'take the VM over from the host that has it' }),
      async (argv) =>
        (await import('./commands/lifecycle.js')).startCommand(
          { domain: argv.domain, noSync: argv['no-sync'], stealLease: argv['steal-lease'] },
          context(argv.config),
        ),
    )
    .command(
      'stop <domain>',
      'shut a VM down (virsh shutdown) and wait until it is off',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('no-push', { type: 'boolean', default: false, describe: 'keep its changes here this once (the lease stays here)' })
          .option('force', { type: 'boolean', default: false, describe: 'virsh destroy: like pulling the plug' })
          .option('timeout', { type: 'number', default: 300, describe: 'seconds to wait for the guest to shut down' }),
      async (argv) =>
        (await import('./commands/lifecycle.js')).stopCommand(
          { domain: argv.domain, noPush: argv['no-push'], force: argv.force, timeoutSeconds: argv.timeout },
          context(argv.config),
        ),
    )
    .command(
      'resolve <domain>',
      'end a conflict: keep this host\'s side or the NAS\'s; the other is kept as a branch',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('keep', { choices: ['local', 'remote'] as const, demandOption: true, describe: 'which side becomes current' }),
      async (argv) => (await import('./commands/lifecycle.js')).resolveCommand({ domain: argv.domain, keep: argv.keep }, context(argv.config)),
    )
    .command(
      'rollback <domain>',
      'put the disks back as they were at a generation or branch, as a new generation',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('to', { type: 'string', demandOption: true, describe: 'generation id (a prefix will do) or branch name' }),
      async (argv) => (await import('./commands/lifecycle.js')).rollbackCommand({ domain: argv.domain, to: argv.to }, context(argv.config)),
    )
    .command(
      'gc <domain>',
      'apply retention on the NAS: remove old generations and layers nothing needs',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .option('dry-run', { type: 'boolean', default: false, describe: 'say what would be removed, change nothing' }),
      async (argv) => (await import('./commands/lifecycle.js')).gcCommand({ domain: argv.domain, dryRun: argv['dry-run'] }, context(argv.config)),
    )
    .command('snapshot', 'generations and snapshots: list, create, delete, merge', (y) =>
      y
        .command(
          'list <domain>',
          'list generations here and on the NAS, with the head, branches and snapshots',
          (z) =>
            z
              .positional('domain', { type: 'string', demandOption: true })
              .option('remote', { type: 'boolean', default: false, describe: 'only the NAS' })
              .option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
          async (argv) =>
            (await import('./commands/snapshot.js')).snapshotList(
              { domain: argv.domain, remote: argv.remote, json: argv.json, configFile: configPath(argv.config, io.env) },
              io,
            ),
        )
        .command(
          'create <domain>',
          'push what this host has (the VM shut off), then name that generation a snapshot, kept on the NAS until deleted',
          (z) =>
            z
              .positional('domain', { type: 'string', demandOption: true })
              .option('name', { type: 'string', describe: 'its name (default: the time, like 2026-11-22T153012)' }),
          async (argv) => (await import('./commands/snapshot.js')).snapshotCreate({ domain: argv.domain, name: argv.name }, context(argv.config)),
        )
        .command(
          'delete <domain> <name>',
          "delete a snapshot's name; its generation is then left to retention",
          (z) => z.positional('domain', { type: 'string', demandOption: true }).positional('name', { type: 'string', demandOption: true }),
          async (argv) => (await import('./commands/snapshot.js')).snapshotDelete({ domain: argv.domain, name: argv.name }, context(argv.config)),
        )
        .command(
          'merge <domain>',
          "merge this host's chain of each disk into as few layers as it safely can (the NAS is not changed)",
          (z) => z.positional('domain', { type: 'string', demandOption: true }),
          async (argv) => (await import('./commands/snapshot.js')).snapshotMerge({ domain: argv.domain }, context(argv.config)),
        )
        .demandCommand(1, 'name a snapshot command: list, create, delete or merge'),
    )
    .command(
      'hook qemu <domain> <op> <subop> [extra]',
      'run as the libvirt qemu hook (what /etc/libvirt/hooks/qemu does)',
      (y) =>
        y
          .positional('domain', { type: 'string', demandOption: true })
          .positional('op', { type: 'string', demandOption: true })
          .positional('subop', { type: 'string', demandOption: true })
          .positional('extra', { type: 'string', default: '-' }),
      async (argv) => {
        exitCode = await io.runHook([argv.domain, argv.op, argv.subop, argv.extra]);
      },
    )
    .demandCommand(1, 'name a command (kss --help lists them)')
    .strict()
    .version(VERSION)
    .help()
    .alias('h', 'help')
    .wrap(Math.min(100, process.stdout.columns ?? 100))
    .exitProcess(false)
    .fail((message, error) => {
      if (error) throw error;
      throw new UsageError(message ?? 'invalid command line', { remedy: 'run `kss --help` for usage' });
    });
  await cli.parseAsync();
  return exitCode;
}
