// Every command of the CLI as data: what `kss --help` prints (lib/cli.ts wires it into
// yargs), what the man page kss(1) says (lib/man-page.ts) and what shell completion
// offers (lib/completion.ts) all come from this one table. Pure.

export interface OptionSpec {
  type: 'boolean' | 'string' | 'number';
  describe: string;
  default?: boolean | number | string;
  alias?: string;
  choices?: readonly string[];
  demandOption?: boolean;
  /** What the value names, for completion: a file or a directory (default: anything). */
  completes?: 'file' | 'dir';
}

/** What a word of the command line stands for: completion offers names of that kind. */
export type Completes = 'domain' | 'file' | 'none';

export interface PositionalSpec {
  name: string;
  describe?: string;
  /** `[name]`: may be left out. */
  optional?: boolean;
  /** `<name..>`: one or more. */
  variadic?: boolean;
  default?: string;
  completes: Completes;
}

export interface CommandSpec {
  /** The words that name it, e.g. ['snapshot', 'list']. */
  words: readonly string[];
  describe: string;
  positionals?: readonly PositionalSpec[];
  options?: Readonly<Record<string, OptionSpec>>;
  /** Commands under it; a command with no handler of its own needs one of them. */
  subcommands?: readonly CommandSpec[];
  /** Runs only under a subcommand (`kss snapshot` alone is a usage error). */
  group?: boolean;
  /** Not listed by --help, the man page or completion (plumbing for scripts of ours). */
  hidden?: boolean;
  /** Literal words between the name and the positionals (`kss hook qemu …`). */
  literal?: string;
}

/** The global options, before or after the command. */
export const GLOBAL_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  config: { type: 'string', describe: 'configuration file (default: $KSS_CONFIG, then /etc/kvm-snapshot-sync/config.json)', completes: 'file' },
};

export const SUMMARY = 'keeps KVM virtual machines in sync between hosts through a NAS';

const domain: PositionalSpec = { name: 'domain', completes: 'domain' };
const optionalDomain: PositionalSpec = { name: 'domain', optional: true, describe: 'one domain (default: every domain managed here)', completes: 'domain' };
const disk: PositionalSpec = { name: 'disk', describe: 'path of the disk image', completes: 'file' };
const json: Record<string, OptionSpec> = { json: { type: 'boolean', default: false, describe: 'print JSON' } };

export const COMMANDS: readonly CommandSpec[] = [
  {
    words: ['config'],
    describe: 'show the configuration in effect, validated, defaults filled in',
    options: json,
    subcommands: [
      {
        words: ['config', 'set'],
        describe: 'set keys of the configuration file (KEY=VALUE ...), creating it if needed; nothing is written unless the result is valid',
        positionals: [{ name: 'settings', variadic: true, completes: 'none' }],
      },
    ],
  },
  { words: ['chain'], describe: "show a disk image's backing chain, top first", positionals: [disk], options: json },
  { words: ['check'], describe: 'check every image of a disk chain for corruption (qemu-img check)', positionals: [disk], options: json },
  { words: ['enable'], describe: 'take a shut-off domain under management on this host (its disks become the first generation)', positionals: [{ name: 'domain', completes: 'none' }] },
  {
    words: ['clone'],
    describe: 'on another host: define the domain from the NAS, with its newest disks, ready for virsh start',
    positionals: [{ name: 'domain', completes: 'none' }],
    options: {
      dir: { type: 'string', describe: "put the disks in this directory (default: the paths of the host that enabled it, which must be in one of this host's storage pools)", completes: 'dir' },
    },
  },
  { words: ['delta'], describe: 'what would move between this host and the NAS, in bytes, each way', positionals: [domain], options: json },
  { words: ['disable'], describe: 'take a shut-off domain out of management here, losing nothing: its disks become standalone images again', positionals: [domain] },
  { words: ['doctor'], describe: 'check the configuration, the NAS, the tools, the hook, space and the image directories; each problem with its fix' },
  {
    words: ['status'],
    describe: 'where each managed domain stands: synced, behind, ahead (push pending), busy, conflict, checked out by another host, offline',
    positionals: [optionalDomain],
    options: json,
  },
  {
    words: ['view'],
    describe: "open the VM's screen where it runs now: here, or on the host that has it checked out (virt-viewer over libvirt's URI of that host: the peers key)",
    positionals: [domain],
  },
  {
    words: ['wait'],
    describe: 'wait until no sync work runs for the domain; exit 0 when the NAS has everything of this host and the VM is not checked out here',
    positionals: [domain],
    options: { timeout: { type: 'number', default: 3600, describe: 'seconds to wait for work in flight' } },
  },
  {
    words: ['push'],
    describe: 'push what this host has and the NAS lacks, with progress (the work a stop does in the background); the VM must be shut off',
    positionals: [domain],
  },
  {
    words: ['definition'],
    describe: "show the domain's definition as it travels (the portable part) and this host's own part, side by side",
    positionals: [domain],
    options: json,
  },
  {
    words: ['pull'],
    describe: "put the NAS's newest definition of the domain in place and fetch its newest generation, with progress, so that the next start has nothing to download",
    positionals: [domain],
  },
  {
    words: ['log'],
    describe: "show the domain's hook and background log",
    positionals: [domain],
    options: { follow: { alias: 'f', type: 'boolean', default: false, describe: 'keep printing new lines' } },
  },
  {
    words: ['start'],
    describe: 'start a VM (virsh start) with one-shot sync options',
    positionals: [domain],
    options: {
      'no-sync': { type: 'boolean', default: false, describe: 'start without the NAS, this once' },
      'steal-lease': { type: 'boolean', default: false, describe: 'take the VM over from the host that has it' },
    },
  },
  {
    words: ['stop'],
    describe: 'shut a VM down (virsh shutdown) and wait until it is off',
    positionals: [domain],
    options: {
      'no-push': { type: 'boolean', default: false, describe: 'keep its changes here this once (the lease stays here)' },
      force: { type: 'boolean', default: false, describe: 'virsh destroy: like pulling the plug' },
      timeout: { type: 'number', default: 300, describe: 'seconds to wait for the guest to shut down' },
    },
  },
  {
    words: ['resolve'],
    describe: "end a conflict: keep this host's side or the NAS's; the other is kept as a branch",
    positionals: [domain],
    options: { keep: { type: 'string', choices: ['local', 'remote'], demandOption: true, describe: 'which side becomes current' } },
  },
  {
    words: ['rollback'],
    describe: 'put the disks back as they were at a generation or branch, as a new generation',
    positionals: [domain],
    options: { to: { type: 'string', demandOption: true, describe: 'generation id (a prefix will do) or branch name' } },
  },
  {
    words: ['gc'],
    describe: 'apply retention on the NAS: remove old generations and layers nothing needs',
    positionals: [domain],
    options: { 'dry-run': { type: 'boolean', default: false, describe: 'say what would be removed, change nothing' } },
  },
  {
    words: ['snapshot'],
    describe: 'generations and snapshots: list, create, delete, merge',
    group: true,
    subcommands: [
      {
        words: ['snapshot', 'list'],
        describe: 'list generations here and on the NAS, with the head, branches and snapshots',
        positionals: [domain],
        options: { remote: { type: 'boolean', default: false, describe: 'only the NAS' }, ...json },
      },
      {
        words: ['snapshot', 'create'],
        describe: 'push what this host has (the VM shut off), then name that generation a snapshot, kept on the NAS until deleted',
        positionals: [domain],
        options: { name: { type: 'string', describe: 'its name (default: the time, like 2026-11-22T153012)' } },
      },
      {
        words: ['snapshot', 'delete'],
        describe: "delete a snapshot's name; its generation is then left to retention",
        positionals: [domain, { name: 'name', completes: 'none' }],
      },
      {
        words: ['snapshot', 'merge'],
        describe: "merge this host's chain of each disk into as few layers as it safely can (the NAS is not changed)",
        positionals: [domain],
      },
    ],
  },
  {
    words: ['hook'],
    literal: 'qemu',
    describe: 'run as the libvirt qemu hook (what /etc/libvirt/hooks/qemu does)',
    positionals: [
      { name: 'domain', completes: 'none' },
      { name: 'op', completes: 'none' },
      { name: 'subop', completes: 'none' },
      { name: 'extra', optional: true, default: '-', completes: 'none' },
    ],
  },
  {
    words: ['domains'],
    hidden: true,
    describe: 'print the names of the domains managed here, one a line, without asking the NAS (for shell completion)',
  },
];

/** Every command of the table, depth first, each before its subcommands. */
export function allCommands(commands: readonly CommandSpec[] = COMMANDS): CommandSpec[] {
  return commands.flatMap((command) => [command, ...allCommands(command.subcommands ?? [])]);
}

/** The commands a person is shown (--help, the man page, completion). */
export function shownCommands(): CommandSpec[] {
  return allCommands().filter((command) => command.hidden !== true);
}

/** `<settings..>`, `[domain]`, `<domain>`. */
export function positionalUsage(p: PositionalSpec): string {
  return p.optional === true ? `[${p.name}]` : `<${p.name}${p.variadic === true ? '..' : ''}>`;
}

/** The command's own part of a yargs command string: its last word, the literal, the positionals. */
export function yargsCommandString(command: CommandSpec): string {
  return [command.words.at(-1), command.literal, ...(command.positionals ?? []).map(positionalUsage)].filter((part) => part !== undefined).join(' ');
}

/** The id a handler is registered under: the words joined by a space. */
export const commandId = (command: CommandSpec): string => command.words.join(' ');
