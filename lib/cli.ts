// The command line (`kvm-snapshot-sync`, `kss`): wiring only, and the only importer of
// yargs. The commands, their words, positionals and options are lib/command-table.ts;
// this file gives each one its handler, a plain async function in lib/commands/ loaded
// when it runs.
import yargs, { type Argv } from 'yargs';
import { COMMANDS, GLOBAL_OPTIONS, SUMMARY, allCommands, commandId, yargsCommandString, type CommandSpec, type OptionSpec } from './command-table.js';
import type { CommandContext } from './commands/lifecycle.js';
import type { Output } from './commands/output.js';
import { configPath } from './config.js';
import { UsageError } from './errors.js';
import { VERSION } from './version.js';

export interface CliIo extends Output {
  env: NodeJS.ProcessEnv;
  /** Runs the hook face, for `kss hook qemu …` written after global options. */
  runHook: (args: string[]) => Promise<number>;
}

/** The parsed command line, as yargs gives it (the table says which keys a command has). */
type Args = Record<string, unknown>;
const text = (argv: Args, key: string) => argv[key] as string;
const maybeText = (argv: Args, key: string) => argv[key] as string | undefined;
const flag = (argv: Args, key: string) => argv[key] as boolean;
const count = (argv: Args, key: string) => argv[key] as number;

/** What runs each command of the table; returns an exit code when it decides one. */
type Handler = (argv: Args, context: CommandContext & CliIo) => Promise<number | void>;

const HANDLERS: Record<string, Handler> = {
  config: async (a, c) => (await import('./commands/config.js')).showConfig({ file: c.configFile, json: flag(a, 'json') }, c),
  'config set': async (a, c) => (await import('./commands/config.js')).setConfig({ file: c.configFile, settings: a.settings as string[] }, c),
  chain: async (a, c) => (await import('./commands/chain.js')).showChain({ disk: text(a, 'disk'), json: flag(a, 'json') }, c),
  check: async (a, c) => (await import('./commands/chain.js')).checkChain({ disk: text(a, 'disk'), json: flag(a, 'json') }, c),
  enable: async (a, c) => (await import('./commands/domain.js')).enableCommand({ domain: text(a, 'domain') }, c),
  clone: async (a, c) => (await import('./commands/clone.js')).cloneCommand({ domain: text(a, 'domain'), dir: maybeText(a, 'dir') }, c),
  delta: async (a, c) => (await import('./commands/status.js')).deltaCommand({ domain: text(a, 'domain'), json: flag(a, 'json') }, c),
  disable: async (a, c) => (await import('./commands/domain.js')).disableCommand({ domain: text(a, 'domain') }, c),
  doctor: async (_a, c) => (await import('./commands/doctor.js')).doctorCommand(c),
  status: async (a, c) => (await import('./commands/status.js')).statusCommand({ domain: maybeText(a, 'domain'), json: flag(a, 'json') }, c),
  view: async (a, c) => (await import('./commands/view.js')).viewCommand({ domain: text(a, 'domain') }, c),
  wait: async (a, c) => (await import('./commands/status.js')).waitCommand({ domain: text(a, 'domain'), timeoutSeconds: count(a, 'timeout') }, c),
  push: async (a, c) => (await import('./commands/lifecycle.js')).pushCommand({ domain: text(a, 'domain') }, c),
  definition: async (a, c) => (await import('./commands/definition.js')).definitionCommand({ domain: text(a, 'domain'), json: flag(a, 'json') }, c),
  pull: async (a, c) => (await import('./commands/lifecycle.js')).pullCommand({ domain: text(a, 'domain') }, c),
  log: async (a, c) => (await import('./commands/domain.js')).logCommand({ domain: text(a, 'domain'), follow: flag(a, 'follow') }, c),
  start: async (a, c) =>
    (await import('./commands/lifecycle.js')).startCommand({ domain: text(a, 'domain'), noSync: flag(a, 'no-sync'), stealLease: flag(a, 'steal-lease') }, c),
  stop: async (a, c) =>
    (await import('./commands/lifecycle.js')).stopCommand(
      { domain: text(a, 'domain'), noPush: flag(a, 'no-push'), force: flag(a, 'force'), timeoutSeconds: count(a, 'timeout') },
      c,
    ),
  resolve: async (a, c) => (await import('./commands/lifecycle.js')).resolveCommand({ domain: text(a, 'domain'), keep: text(a, 'keep') as 'local' | 'remote' }, c),
  rollback: async (a, c) => (await import('./commands/lifecycle.js')).rollbackCommand({ domain: text(a, 'domain'), to: text(a, 'to') }, c),
  gc: async (a, c) => (await import('./commands/lifecycle.js')).gcCommand({ domain: text(a, 'domain'), dryRun: flag(a, 'dry-run') }, c),
  'snapshot list': async (a, c) =>
    (await import('./commands/snapshot.js')).snapshotList({ domain: text(a, 'domain'), remote: flag(a, 'remote'), json: flag(a, 'json'), configFile: c.configFile }, c),
  'snapshot create': async (a, c) => (await import('./commands/snapshot.js')).snapshotCreate({ domain: text(a, 'domain'), name: maybeText(a, 'name') }, c),
  'snapshot delete': async (a, c) => (await import('./commands/snapshot.js')).snapshotDelete({ domain: text(a, 'domain'), name: text(a, 'name') }, c),
  'snapshot merge': async (a, c) => (await import('./commands/snapshot.js')).snapshotMerge({ domain: text(a, 'domain') }, c),
  hook: async (a, c) => c.runHook([text(a, 'domain'), text(a, 'op'), text(a, 'subop'), text(a, 'extra')]),
  domains: async (_a, c) => (await import('./commands/status.js')).domainsCommand(c),
};

/** An option as yargs takes it: without what the table says for completion. */
function yargsOption(option: OptionSpec): Omit<OptionSpec, 'completes'> {
  const { completes, ...rest } = option;
  void completes;
  return rest;
}

/** A list in words: "a, b or c". */
const inWords = (items: readonly string[]) => (items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} or ${items.at(-1)}`);

/** The ids of the commands that have a handler (a test holds the table to it). */
export const HANDLED_COMMANDS: readonly string[] = Object.keys(HANDLERS);

/** Parses the arguments, runs the command, and returns the exit code (errors are thrown). */
export async function runCli(args: string[], io: CliIo): Promise<number> {
  let exitCode = 0;
  const context = (argv: Args): CommandContext & CliIo => ({ ...io, configFile: configPath(maybeText(argv, 'config'), io.env) });

  /** Declares one command of the table, and its subcommands under it. */
  const declare = (y: Argv, command: CommandSpec): Argv => {
    const handler = command.group === true ? undefined : HANDLERS[commandId(command)];
    if (command.group !== true && handler === undefined) throw new Error(`the command "${commandId(command)}" has no handler`);
    // yargs leaves a command out of --help when its description is false.
    const describe = (command.hidden === true ? false : command.describe) as string;
    return y.command(
      yargsCommandString(command),
      describe,
      (z) => {
        for (const p of command.positionals ?? []) {
          z.positional(p.name, { type: 'string', demandOption: p.optional !== true && p.default === undefined, describe: p.describe, default: p.default, array: p.variadic });
        }
        for (const [name, option] of Object.entries(command.options ?? {})) z.option(name, yargsOption(option));
        for (const sub of command.subcommands ?? []) declare(z, sub);
        if (command.group === true) z.demandCommand(1, `name a ${commandId(command)} command: ${inWords((command.subcommands ?? []).map((s) => s.words.at(-1) as string))}`);
        return z;
      },
      handler === undefined
        ? undefined
        : async (argv) => {
            const code = await handler(argv as Args, context(argv as Args));
            if (typeof code === 'number') exitCode = code;
          },
    );
  };

  let cli = yargs(args)
    // --no-sync and --no-push are flags of their own, not "not --sync".
    .parserConfiguration({ 'boolean-negation': false })
    .scriptName('kss')
    .usage(`kvm-snapshot-sync (kss): ${SUMMARY}.\n\nUsage: $0 <command> [options]`);
  for (const [name, option] of Object.entries(GLOBAL_OPTIONS)) cli = cli.option(name, yargsOption(option));
  for (const command of COMMANDS) cli = declare(cli, command);
  cli = cli
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
