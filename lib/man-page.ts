// The manual page kss(1), written at build time (scripts/docs.ts) from the command table
// that --help prints, the exit codes and the files the tool uses. Pure.
import { GLOBAL_OPTIONS, SUMMARY, shownCommands, type CommandSpec, type OptionSpec } from './command-table.js';
import { EXIT_CODE_MEANINGS } from './errors.js';

/** Where the tool keeps what (the defaults; the config can move the state and logs). */
export const FILES: ReadonlyArray<readonly [string, string]> = [
  ['/etc/kvm-snapshot-sync/config.json', 'the configuration: this host\'s name, the NAS, and the keys `kss config` shows'],
  ['/etc/libvirt/hooks/qemu', 'the libvirt hook, a copy of the executable; /etc/libvirt/hooks/qemu.d/kvm-snapshot-sync when another program\'s qemu hook is there'],
  ['/var/lib/kvm-snapshot-sync/', 'per-domain state and locks (domains/), and the local NAS (nas/) when no other is configured'],
  ['/var/log/kvm-snapshot-sync/', 'one log per domain, of the hook and the work it runs in the background (`kss log`)'],
];

const DESCRIPTION = [
  'kvm-snapshot-sync makes a KVM virtual machine follow its owner between two hosts through a NAS. It is the libvirt hook /etc/libvirt/hooks/qemu and this command, one executable.',
  'Before a managed domain starts (virsh start, virt-manager), the hook brings its newest generation from the NAS and puts a fresh qcow2 overlay on its disks; after it stops, the overlay is sealed, compacted and pushed in the background. When both hosts changed the domain, the start is refused until `kss resolve` chooses a side; the other side is kept. The disks, the UEFI variables, the TPM state and the definition travel; what belongs to one host stays there.',
  'A domain is managed once `kss enable` took it (on the first host) or `kss clone` made it (on another).',
];

/** Text for roff: backslashes escaped, `code` in bold, no line starting with a control character. */
function roff(text: string): string {
  const escaped = text.replace(/\\/gu, '\\e').replace(/-/gu, '\\-');
  const marked = escaped.replace(/`([^`]+)`/gu, '\\fB$1\\fR');
  return marked.replace(/^([.'])/u, '\\&$1');
}

/** An option in a synopsis, e.g. `[--dir DIR]`: in brackets unless required. */
function optionUsage(name: string, option: OptionSpec): string {
  const value = option.type === 'boolean' ? '' : ` \\fI${option.choices ? option.choices.join('|') : name.toUpperCase()}\\fR`;
  const usage = `\\fB\\-\\-${roff(name)}\\fR${value}`;
  return option.demandOption === true ? usage : `[${usage}]`;
}

function synopsis(command: CommandSpec): string {
  const words = [...command.words, ...(command.literal === undefined ? [] : [command.literal])].map((word) => `\\fB${roff(word)}\\fR`);
  const positionals = (command.positionals ?? []).map((p) => {
    const name = `\\fI${roff(p.name)}\\fR${p.variadic === true ? ' ...' : ''}`;
    return p.optional === true ? `[${name}]` : name;
  });
  const options = Object.entries(command.options ?? {}).map(([name, option]) => optionUsage(name, option));
  return ['\\fBkss\\fR', ...words, ...positionals, ...options].join(' ');
}

function optionItems(options: Readonly<Record<string, OptionSpec>>): string[] {
  return Object.entries(options).flatMap(([name, option]) => {
    const names = [`\\fB\\-\\-${roff(name)}\\fR`, ...(option.alias === undefined ? [] : [`\\fB\\-${roff(option.alias)}\\fR`])].join(', ');
    const extra = [option.demandOption === true ? 'required' : undefined, option.default !== undefined && option.type !== 'boolean' ? `default: ${String(option.default)}` : undefined].filter((x) => x !== undefined);
    return ['.TP', names, roff(option.describe + (extra.length > 0 ? ` (${extra.join('; ')})` : ''))];
  });
}

/** The page, in roff (man(7)). */
export function manPage(version: string): string {
  const lines = [
    `.TH KSS 1 "" "kvm-snapshot-sync ${roff(version)}" "User Commands"`,
    '.SH NAME',
    `kss, kvm\\-snapshot\\-sync \\- ${roff(SUMMARY)}`,
    '.SH SYNOPSIS',
    ['\\fBkss\\fR', ...Object.entries(GLOBAL_OPTIONS).map(([name, option]) => optionUsage(name, option)), '\\fIcommand\\fR [\\fIoptions\\fR]'].join(' '),
    '.br',
    '\\fBkss \\-\\-help\\fR | \\fBkss \\-\\-version\\fR',
    '.SH DESCRIPTION',
    ...DESCRIPTION.flatMap((paragraph, i) => (i === 0 ? [roff(paragraph)] : ['.PP', roff(paragraph)])),
    '.SH OPTIONS',
    ...optionItems(GLOBAL_OPTIONS),
    '.TP',
    '\\fB\\-\\-help\\fR, \\fB\\-h\\fR',
    'show the commands, or a command\'s options (\\fBkss\\fR \\fIcommand\\fR \\fB\\-\\-help\\fR)',
    '.TP',
    '\\fB\\-\\-version\\fR',
    'show the version',
    '.SH COMMANDS',
    ...shownCommands()
      .filter((command) => command.group !== true)
      .flatMap((command) => {
        const options = command.options === undefined ? [] : ['.RS', ...optionItems(command.options), '.RE'];
        return ['.TP', synopsis(command), roff(command.describe), ...options];
      }),
    '.SH EXIT STATUS',
    ...Object.entries(EXIT_CODE_MEANINGS).flatMap(([code, meaning]) => ['.TP', `\\fB${code}\\fR`, roff(meaning)]),
    '.PP',
    roff('In the hook, only `prepare begin` exits non-zero (that aborts the start); failures elsewhere are logged and the hook exits 0.'),
    '.SH FILES',
    ...FILES.flatMap(([path, what]) => ['.TP', `\\fI${roff(path)}\\fR`, roff(what)]),
    '.SH SEE ALSO',
    '\\fBvirsh\\fR(1), \\fBqemu\\-img\\fR(1), \\fBssh\\fR(1); the README in /usr/share/doc/kvm\\-snapshot\\-sync/',
  ];
  return `${lines.join('\n')}\n`;
}
