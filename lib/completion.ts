// Shell completion for bash and zsh, written at build time (scripts/docs.ts) from the
// command table: the commands, their flags and the values a flag takes, and the names
// of the managed domains, which the scripts ask of the executable itself (`kss domains`,
// local state only: never the NAS, so Tab is never slow). Pure.
import { GLOBAL_OPTIONS, shownCommands, type CommandSpec, type OptionSpec } from './command-table.js';

/** What a flag's value completes to. */
function valueKind(option: OptionSpec): string {
  if (option.type === 'boolean') return 'flag';
  if (option.choices !== undefined) return `choices:${option.choices.join(' ')}`;
  return option.completes ?? 'any';
}

const id = (command: CommandSpec) => command.words.join(' ');
const bashQuote = (text: string) => `'${text.replace(/'/gu, "'\\''")}'`;

/** The leading word (and the one under it, for commands with subcommands) a command line names. */
function commandTree(): { top: string[]; subs: Map<string, string[]> } {
  const commands = shownCommands();
  const top = commands.filter((c) => c.words.length === 1).map(id);
  const subs = new Map<string, string[]>();
  for (const c of commands) {
    const children = (c.subcommands ?? []).filter((s) => s.hidden !== true);
    if (children.length > 0) subs.set(id(c), children.map((s) => s.words.at(-1) as string));
  }
  return { top, subs };
}

/** The bash script (bash-completion's completions directory, or sourced). */
export function bashCompletion(): string {
  const { top, subs } = commandTree();
  const commands = shownCommands();
  const entry = (key: string, value: string) => `  [${bashQuote(key)}]=${bashQuote(value)}`;
  const options = commands.map((c) => entry(id(c), Object.keys(c.options ?? {}).map((n) => `--${n}`).join(' ')));
  const positionals = commands.map((c) => entry(id(c), (c.positionals ?? []).map((p) => (p.variadic === true ? `${p.completes}...` : p.completes)).join(' ')));
  const values = [
    ...Object.entries(GLOBAL_OPTIONS).map(([n, o]) => entry(`--${n}`, valueKind(o))),
    ...commands.flatMap((c) => Object.entries(c.options ?? {}).map(([n, o]) => entry(`${id(c)} --${n}`, valueKind(o)))),
  ];
  const subcommands = [...subs].map(([key, list]) => entry(key, list.join(' ')));
  return `# bash completion for kss and kvm-snapshot-sync; generated from the command table (lib/command-table.ts)
declare -gA _kss_options=(
${options.join('\n')}
)
declare -gA _kss_positionals=(
${positionals.join('\n')}
)
declare -gA _kss_values=(
${values.join('\n')}
)
declare -gA _kss_subcommands=(
${subcommands.join('\n')}
)

_kss() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=
  ((COMP_CWORD > 0)) && prev=\${COMP_WORDS[COMP_CWORD - 1]}
  local -a args=() config=() kinds=()
  local i word command= kind
  # The command's words and the positionals typed so far; flags and their values skipped.
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=\${COMP_WORDS[i]}
    if [[ $word == -* ]]; then
      [[ $word == --config ]] && config=(--config "\${COMP_WORDS[i + 1]}")
      kind=\${_kss_values["$command $word"]:-\${_kss_values[$word]:-flag}}
      [[ $kind != flag ]] && ((i++))
      continue
    fi
    if [[ -z $command ]]; then
      command=$word
    elif [[ $command != *" "* && \${#args[@]} -eq 0 && " \${_kss_subcommands[$command]-} " == *" $word "* ]]; then
      command="$command $word"
    else
      args+=("$word")
    fi
  done

  COMPREPLY=()
  if [[ $prev == -* ]]; then
    kind=\${_kss_values["$command $prev"]:-\${_kss_values[$prev]:-flag}}
    case $kind in
      choices:*) mapfile -t COMPREPLY < <(compgen -W "\${kind#choices:}" -- "$cur"); return ;;
      dir) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
      file) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
      any) return ;;
    esac
  fi
  if [[ -z $command ]]; then
    mapfile -t COMPREPLY < <(compgen -W '${top.join(' ')} --config --help --version' -- "$cur")
    return
  fi
  if [[ $cur == -* ]]; then
    mapfile -t COMPREPLY < <(compgen -W "\${_kss_options[$command]-} --help" -- "$cur")
    return
  fi
  if [[ $command != *" "* && -n \${_kss_subcommands[$command]-} && \${#args[@]} -eq 0 ]]; then
    mapfile -t COMPREPLY < <(compgen -W "\${_kss_subcommands[$command]}" -- "$cur")
  fi
  read -r -a kinds <<<"\${_kss_positionals[$command]-}"
  kind=\${kinds[\${#args[@]}]-}
  if [[ -z $kind && \${#kinds[@]} -gt 0 && \${kinds[-1]} == *... ]]; then kind=\${kinds[-1]}; fi
  case \${kind%...} in
    # Matched here, not by compgen -W, which would expand $(…) in a domain's name.
    domain)
      while IFS= read -r word; do
        [[ $word == "$cur"* ]] && COMPREPLY+=("$word")
      done < <("\${COMP_WORDS[0]}" "\${config[@]}" domains 2>/dev/null)
      ;;
    file) mapfile -t -O "\${#COMPREPLY[@]}" COMPREPLY < <(compgen -f -- "$cur") ;;
  esac
}
complete -F _kss kss kvm-snapshot-sync
`;
}

/** Text inside a single-quoted zsh word: a description in _arguments' brackets, or after _describe's colon. */
const zshQuoted = (text: string) => text.replace(/'/gu, "'\\''");
const zshDescription = (text: string) => zshQuoted(text.replace(/\\/gu, '\\\\').replace(/([[\]])/gu, '\\$1'));
const zshName = (command: CommandSpec) => ['_kss', ...command.words].join('_');

function zshOption(name: string, option: OptionSpec): string {
  const kind = valueKind(option);
  const value =
    kind === 'flag' ? '' : kind === 'dir' ? ':directory:_files -/' : kind === 'file' ? ':file:_files' : kind.startsWith('choices:') ? `:${name}:(${kind.slice(8)})` : `:${name}: `;
  const names = option.alias === undefined ? `--${name}` : `(--${name} -${option.alias})'{--${name},-${option.alias}}'`;
  return `'${names}[${zshDescription(option.describe)}]${value}'`;
}

function zshPositional(command: CommandSpec): string[] {
  return (command.positionals ?? []).map((p, i) => {
    // A word of its own kind: nothing to offer, but flags still complete there.
    const action = p.completes === 'domain' ? '_kss_domains' : p.completes === 'file' ? '_files' : `_guard "^-*" ${p.name}`;
    const position = p.variadic === true ? '*' : `${i + 1}`;
    return `'${position}${p.optional === true ? ':' : ''}:${p.name}:${action}'`;
  });
}

function zshFunction(command: CommandSpec): string[] {
  const options = Object.entries(command.options ?? {}).map(([n, o]) => zshOption(n, o));
  const children = (command.subcommands ?? []).filter((s) => s.hidden !== true);
  if (children.length === 0) return [`${zshName(command)}() {`, `  _arguments ${[...options, ...zshPositional(command)].join(' ')}`, '}'];
  const list = children.map((s) => `'${s.words.at(-1) as string}:${zshQuoted(s.describe)}'`);
  return [
    `${zshName(command)}() {`,
    '  local curcontext=$curcontext state line',
    `  _arguments -C ${options.join(' ')} '1: :->command' '*:: :->args'`,
    '  case $state in',
    `    command) local -a commands=(${list.join(' ')}); _describe -t commands '${['kss', ...command.words].join(' ')} command' commands ;;`,
    `    args) (( $+functions[${zshName(command)}_$words[1]] )) && ${zshName(command)}_$words[1] ;;`,
    '  esac',
    '}',
  ];
}

/** The zsh script (a `_kss` file in $fpath). */
export function zshCompletion(): string {
  const commands = shownCommands();
  const top = commands.filter((c) => c.words.length === 1);
  const root: CommandSpec = { words: [], describe: '', options: { ...GLOBAL_OPTIONS }, subcommands: top };
  const functions = [root, ...commands].flatMap((c) => [...zshFunction(c), '']);
  return `#compdef kss kvm-snapshot-sync
# zsh completion for kss and kvm-snapshot-sync; generated from the command table (lib/command-table.ts)

# The domains managed here, from the executable's local state (never the NAS).
_kss_domains() {
  local -a names
  names=(\${(f)"$(_call_program domains \${service:-kss} domains 2>/dev/null)"})
  _describe -t domains 'managed domain' names
}

${functions.join('\n')}
_kss "$@"
`;
}
