# What goes where, and the steps that put it there: the one description that install.sh
# (sourced, prefix /usr/local) and the Debian package (copied into its maintainer scripts
# by scripts/package.mjs, prefix /usr) share. Bash; nothing runs when it is sourced.
#
# Bash does not stop for a failure inside a function called as an `if` condition, nor
# for one before the last command of an `a && b` list: those places check each step
# themselves.

HOOKS_DIR=/etc/libvirt/hooks
HOOK="$HOOKS_DIR/qemu"
BESIDE="$HOOKS_DIR/qemu.d/kvm-snapshot-sync"
CONFIG_DIR=/etc/kvm-snapshot-sync
CONFIG="$CONFIG_DIR/config.json"
STATE_DIR=/var/lib/kvm-snapshot-sync
LOG_DIR=/var/log/kvm-snapshot-sync
DEFAULT_NAS="$STATE_DIR/nas"
# What the executable runs (the package's Depends).
PACKAGES=(qemu-utils openssh-client zstd openssl)
# A string only our executable holds: tells our hook from another program's.
MARK='urn:kvm-snapshot-sync:domain:1'

# The places under a prefix (/usr/local for install.sh, /usr for the package): the
# executable, the two commands, the man page, and bash's and zsh's completion.
layout_under() {
  local prefix=$1
  LIB_DIR="$prefix/lib/kvm-snapshot-sync"
  KSS="$LIB_DIR/kvm-snapshot-sync"
  BIN_DIR="$prefix/bin"
  COMMANDS=(kvm-snapshot-sync kss)
  MAN1_DIR="$prefix/share/man/man1"
  BASH_COMPLETION_DIR="$prefix/share/bash-completion/completions"
  # Debian's zsh looks in vendor-completions for packages and site-functions for the rest.
  if [[ $prefix == /usr ]]; then ZSH_COMPLETION_DIR="$prefix/share/zsh/vendor-completions"; else ZSH_COMPLETION_DIR="$prefix/share/zsh/site-functions"; fi
  # The files the build writes into dist/ beside the executable → where each goes. The
  # package stores a man page compressed, as TARGET.gz (Debian policy).
  DOC_FILES=("kss.1:$MAN1_DIR/kss.1" "completion/kss:$BASH_COMPLETION_DIR/kss" "completion/_kss:$ZSH_COMPLETION_DIR/_kss")
  # Second names, for the long command: link → the file it names, in the same directory.
  DOC_LINKS=("$MAN1_DIR/kvm-snapshot-sync.1:$MAN1_DIR/kss.1" "$BASH_COMPLETION_DIR/kvm-snapshot-sync:$BASH_COMPLETION_DIR/kss")
}

say() { echo "${SAY_AS:-kvm-snapshot-sync}: $*" >&2; }
fail() {
  say "$1"
  exit "${2:-1}"
}

# Ours: an executable (ELF) file that holds the mark. Another program's hook script that
# merely mentions our namespace is not ours, and is never replaced or removed.
ours() { [[ -f $1 ]] && [[ $(LC_ALL=C head -c 4 -- "$1") == $'\x7fELF' ]] && grep -qaF "$MARK" "$1"; }

# The temporary file of a place() under way: removed however the script ends.
temp_file=
trap 'if [[ -n $temp_file ]]; then rm -f -- "$temp_file"; fi' EXIT

# Copies $1 to $2 (mode 0755) unless $2 already has the same bytes (then returns 1), by
# a temporary copy in directory $3 (default: $2's own; on the same file system) that is
# checked to run `--version` and print a version (a build whose injection failed is a
# plain node, printing "v24…"), then renamed over $2 in one step: $2 is the old file or
# the new one, never a part. The hook is a copy, not a link: libvirtd's AppArmor profile
# lets it run what is under /etc/libvirt/hooks.
place() {
  local source=$1 target=$2 dir=${3:-$(dirname "$2")} version=
  if cmp -s "$source" "$target"; then return 1; fi
  install -d -m 0755 "$(dirname "$target")" "$dir" || fail "cannot create the directory of $target"
  if [[ $(stat -c %d -- "$dir") != "$(stat -c %d -- "$(dirname "$target")")" ]]; then
    fail "$dir and $(dirname "$target") are on different file systems: $target cannot be replaced in one step"
  fi
  rm -f -- "$dir/.$(basename "$target").kss-new."* # left by a run that was killed
  temp_file=$(mktemp "$dir/.$(basename "$target").kss-new.XXXXXX") || fail "cannot create a temporary file in $dir: $target is left as it was"
  if ! cp -- "$source" "$temp_file" || ! chmod 0755 "$temp_file" || ! sync -- "$temp_file"; then
    fail "cannot copy $source to $temp_file: $target is left as it was"
  fi
  version=$("$temp_file" --version 2>/dev/null) || true
  if [[ ! $version =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    fail "the copy of $source does not run (--version said ${version:-nothing}): $target is left as it was; rebuild it (npm run build)"
  fi
  mv -f -T -- "$temp_file" "$target" || fail "cannot rename $temp_file to $target: it is left as it was"
  temp_file=
}

# Tells a running libvirtd (or the modular virtqemud) to look for hooks again: it finds
# a new hook only at start or on SIGHUP. By its pid file, never by name. A SIGHUP that
# comes while the daemon is still reloading is dropped ("Drivers are not initialized,
# reload ignored"): a reload under way (its thread is named daemon-reload) is waited
# for before the signal, and the one it starts after it, so that the next run's signal
# (an uninstall, then an install) is not dropped either.
reloading() { grep -qsx daemon-reload /proc/"$1"/task/*/comm; }
until_reloaded() {
  local pid=$1 daemon=$2 tenths=600
  while reloading "$pid"; do
    if ((tenths-- == 0)); then
      say "$daemon is still reloading after 60 s: if hooks do not run, restart it"
      return 0
    fi
    sleep 0.1
  done
}
reload_libvirt() {
  local daemon pid
  for daemon in libvirtd virtqemud; do
    pid=$(cat "/run/$daemon.pid" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || continue
    # A pid file left by a daemon that died may name another process now: SIGHUP would end it.
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$daemon" ]] || continue
    until_reloaded "$pid" "$daemon"
    if kill -HUP "$pid" 2>/dev/null; then
      say "told $daemon to look for hooks again"
      sleep 0.2 # the daemon takes up the signal in its own event loop
      until_reloaded "$pid" "$daemon"
    fi
  done
}

# Puts a copy of $KSS where libvirt runs it as the qemu hook: hooks/qemu, unless another
# program's hook is there (a dangling link counts), then hooks/qemu.d/. Its temporary
# copy is made in hooks/ itself: libvirt runs every executable in hooks/qemu.d/, a
# half-made one too, but in hooks/ only the files named for a driver. Exactly one copy
# of ours stays: one at the other place (an earlier install's, before another program's
# hook came or went) or left by an older copy step would run every operation a second
# time. Sets hook_changed=true when anything changed.
install_hook() {
  local hook stale
  if [[ -e $HOOK || -L $HOOK ]] && ! ours "$HOOK"; then
    hook=$BESIDE
    say "$HOOK belongs to another program: left as it is; the hook goes to $hook"
  else
    hook=$HOOK
  fi
  hook_changed=false
  remove_leftovers
  if place "$KSS" "$hook" "$HOOKS_DIR"; then
    hook_changed=true
    say "installed the libvirt hook $hook"
  fi
  for stale in "$HOOK" "$BESIDE" "$HOOK.kss-new" "$BESIDE.kss-new"; do
    if [[ $stale != "$hook" ]] && ours "$stale"; then
      rm -f -- "$stale"
      hook_changed=true
      say "removed our old copy of the hook $stale"
    fi
  done
}

# Removes the temporary copies a place() that was cut left in hooks/, for either target.
remove_leftovers() {
  rm -f -- "$HOOKS_DIR/.$(basename "$HOOK").kss-new."* "$HOOKS_DIR/.$(basename "$BESIDE").kss-new."*
}

# Removes every copy of our hook (never another program's).
remove_hooks() {
  local hook
  remove_leftovers
  for hook in "$HOOK" "$BESIDE" "$HOOK.kss-new" "$BESIDE.kss-new"; do
    if ours "$hook"; then
      rm -f -- "$hook"
      say "removed the hook $hook"
    fi
  done
}

# The configuration, state and log directories; state and logs are root's. Their modes
# are set on every run, an upgrade's too: the state holds guest data (the local NAS too).
make_dirs() {
  install -d -m 0755 "$CONFIG_DIR"
  install -d -m 0700 "$STATE_DIR"
  install -d -m 0750 "$LOG_DIR"
}

# Writes the configuration when there is none (this host's short name; without a nas
# setting, the local NAS directory), sets the given KEY=VALUE settings, and checks the
# result: `kss config` fails, saying why, when it is not valid.
configure() {
  local -a settings=("$@")
  has() { [[ " ${settings[*]-} " == *" $1="* ]]; }
  if [[ ! -e $CONFIG ]]; then
    has host || settings+=("host=$(hostname -s)")
    if ! has nas; then
      install -d -m 0700 "$DEFAULT_NAS"
      settings+=("nas=$DEFAULT_NAS")
    fi
  fi
  if [[ ${#settings[@]} -gt 0 ]]; then "$KSS" --config "$CONFIG" config set "${settings[@]}" || fail "the configuration $CONFIG was not changed"; fi
  "$KSS" --config "$CONFIG" config >/dev/null || fail "the configuration $CONFIG is not valid: fix it with kss config set KEY=VALUE"
}

# What a purge or an uninstall leaves, and why.
KEPT_NOTE="kept $STATE_DIR (each domain's state and, by default, the local NAS: guest data) and $LOG_DIR; remove them by hand once nothing there is needed"
