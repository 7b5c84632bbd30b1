#!/usr/bin/env bash
# Installs kvm-snapshot-sync on this machine (Debian 12 and alikes, as root):
#
#   sudo ./install.sh [--nas URL] [--host NAME] [--ssh-identity FILE] [--ssh-known-hosts FILE]
#   sudo ./install.sh --uninstall
#
# - the packages it needs at run time (qemu-utils, openssh-client, zstd, openssl);
# - the executable in /usr/local/lib/kvm-snapshot-sync/ (built first if dist/ lacks it),
#   with the commands kvm-snapshot-sync and kss in /usr/local/bin;
# - the libvirt hook /etc/libvirt/hooks/qemu, or /etc/libvirt/hooks/qemu.d/kvm-snapshot-sync
#   when another program's qemu hook is there (that one is never touched); never both:
#   libvirt runs hooks/qemu and every executable in hooks/qemu.d/, so a copy of ours at
#   the other place (left by an earlier install) is removed;
# - the configuration /etc/kvm-snapshot-sync/config.json: written when missing (the NAS
#   defaults to the local directory /var/lib/kvm-snapshot-sync/nas); on a later run
#   only the keys whose flags are given change;
# - the state and log directories, readable by root only;
# - a running libvirtd is told to look for hooks again (SIGHUP).
# Running it again changes nothing. --uninstall removes what it installed and keeps the
# configuration, the state, the logs and the local NAS directory.
#
# It stops at the first failure, and never leaves a partial executable or hook: each is
# copied under a temporary name, checked to run, and renamed into place. Bash does not
# stop for a failure inside a function called as an `if` condition, nor for one before
# the last command of an `a && b` list: those places check each step themselves.
set -euo pipefail
cd "$(dirname "$0")"

LIB_DIR=/usr/local/lib/kvm-snapshot-sync
BIN_DIR=/usr/local/bin
HOOKS_DIR=/etc/libvirt/hooks
HOOK="$HOOKS_DIR/qemu"
BESIDE="$HOOKS_DIR/qemu.d/kvm-snapshot-sync"
CONFIG_DIR=/etc/kvm-snapshot-sync
CONFIG="$CONFIG_DIR/config.json"
STATE_DIR=/var/lib/kvm-snapshot-sync
LOG_DIR=/var/log/kvm-snapshot-sync
DEFAULT_NAS="$STATE_DIR/nas"
PACKAGES=(qemu-utils openssh-client zstd openssl)
# A string only our executable holds: tells our hook from another program's.
MARK='urn:kvm-snapshot-sync:domain:1'

say() { echo "install.sh: $*" >&2; }
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
# (install.sh --uninstall, then install.sh) is not dropped either.
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
    until_reloaded "$pid" "$daemon"
    if kill -HUP "$pid" 2>/dev/null; then
      say "told $daemon to look for hooks again"
      sleep 0.2 # the daemon takes up the signal in its own event loop
      until_reloaded "$pid" "$daemon"
    fi
  done
}

if [[ $EUID -ne 0 ]]; then fail 'run it as root: sudo ./install.sh'; fi

uninstall=false
settings=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --uninstall) uninstall=true ;;
    --nas) settings+=("nas=${2:?--nas needs a URL}"); shift ;;
    --host) settings+=("host=${2:?--host needs a name}"); shift ;;
    --ssh-identity) settings+=("sshIdentity=${2:?--ssh-identity needs a file}"); shift ;;
    --ssh-known-hosts) settings+=("sshKnownHosts=${2:?--ssh-known-hosts needs a file}"); shift ;;
    *) fail "unknown option $1 (see the top of install.sh)" 2 ;;
  esac
  shift
done

if $uninstall; then
  for hook in "$HOOK" "$BESIDE" "$HOOK.kss-new" "$BESIDE.kss-new"; do
    if ours "$hook"; then
      rm -f -- "$hook"
      say "removed the hook $hook"
    fi
  done
  rm -f "$BIN_DIR/kvm-snapshot-sync" "$BIN_DIR/kss" "$LIB_DIR/kvm-snapshot-sync"
  rmdir "$LIB_DIR" 2>/dev/null || true
  reload_libvirt
  say "kvm-snapshot-sync removed; kept $CONFIG_DIR, $STATE_DIR and $LOG_DIR"
  exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x dist/kvm-snapshot-sync ]]; then
  command -v npm >/dev/null || fail 'dist/kvm-snapshot-sync is not built and npm is missing: install Node.js 20+ and npm, then run this again'
  say 'building dist/kvm-snapshot-sync'
  npm ci
  npm run build
fi

if place dist/kvm-snapshot-sync "$LIB_DIR/kvm-snapshot-sync"; then say "installed $LIB_DIR/kvm-snapshot-sync"; fi
install -d -m 0755 "$BIN_DIR"
for name in kvm-snapshot-sync kss; do
  [[ $(readlink "$BIN_DIR/$name" 2>/dev/null) == "$LIB_DIR/kvm-snapshot-sync" ]] || ln -sfn "$LIB_DIR/kvm-snapshot-sync" "$BIN_DIR/$name"
done
KSS="$LIB_DIR/kvm-snapshot-sync"

# The hook: ours at hooks/qemu, unless another program's hook is there (a dangling link
# counts). Its temporary copy is made in hooks/ itself: libvirt runs every executable in
# hooks/qemu.d/, a half-made one too, but in hooks/ only the files named for a driver.
if [[ -e $HOOK || -L $HOOK ]] && ! ours "$HOOK"; then
  hook=$BESIDE
  say "$HOOK belongs to another program: left as it is; the hook goes to $hook"
else
  hook=$HOOK
fi
hook_changed=false
if place "$KSS" "$hook" "$HOOKS_DIR"; then
  hook_changed=true
  say "installed the libvirt hook $hook"
fi
# Exactly one copy of ours: one at the other place (an earlier install's, before another
# program's hook came or went) or left by an older install.sh's copy step would run
# every operation a second time.
for stale in "$HOOK" "$BESIDE" "$HOOK.kss-new" "$BESIDE.kss-new"; do
  if [[ $stale != "$hook" ]] && ours "$stale"; then
    rm -f -- "$stale"
    hook_changed=true
    say "removed our old copy of the hook $stale"
  fi
done

install -d -m 0755 "$CONFIG_DIR"
install -d -m 0700 "$STATE_DIR"
install -d -m 0750 "$LOG_DIR"
if [[ ! -e $CONFIG ]]; then
  has() { [[ " ${settings[*]-} " == *" $1="* ]]; }
  has host || settings+=("host=$(hostname -s)")
  if ! has nas; then
    install -d -m 0700 "$DEFAULT_NAS"
    settings+=("nas=$DEFAULT_NAS")
  fi
fi
if [[ ${#settings[@]} -gt 0 ]]; then "$KSS" --config "$CONFIG" config set "${settings[@]}"; fi
"$KSS" --config "$CONFIG" config >/dev/null # fails, saying why, when the config is not valid

if $hook_changed; then reload_libvirt; fi
version=$("$KSS" --version)
say "kvm-snapshot-sync $version is installed; next: kss enable VM (see README, \"Daily use\")"
