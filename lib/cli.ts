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
  const cli = yargs(args)
    .scriptName('kss')
    .usage('kvm-snapshot-sync (kss): keeps KVM virtual machines in sync between hosts through a NAS.\n\nUsage: $0 <command> [options]')
    .option('config', {
      type: 'string',
      describe: 'configuration file (default: $KSS_CONFIG, then /etc/kvm-snapshot-sync/config.json)',
    })
    .command(
      'config',
      'show the configuration in effect, validated, defaults filled in',
      (y) => y.option('json', { type: 'boolean', default: false, describe: 'print JSON' }),
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
