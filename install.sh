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
#   when another program's qemu hook is there (that one is never touched);
# - the configuration /etc/kvm-snapshot-sync/config.json: written when missing (the NAS
#   defaults to the local directory /var/lib/kvm-snapshot-sync/nas); on a later run
#   only the keys whose flags are given change;
# - the state and log directories, readable by root only;
# - a running libvirtd is told to look for hooks again (SIGHUP).
# Running it again changes nothing. --uninstall removes what it installed and keeps the
# configuration, the state, the logs and the local NAS directory.
set -euo pipefail
cd "$(dirname "$0")"

LIB_DIR=/usr/local/lib/kvm-snapshot-sync
BIN_DIR=/usr/local/bin
HOOKS_DIR=/etc/libvirt/hooks
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

ours() { [[ -f $1 ]] && grep -qaF "$MARK" "$1"; }

# Copies $1 to $2 (mode 0755) unless $2 already has the same bytes. The hook is a copy,
# not a link: libvirtd's AppArmor profile lets it run what is under /etc/libvirt/hooks.
place() {
  if cmp -s "$1" "$2"; then return 1; fi
  install -D -m 0755 "$1" "$2.kss-new"
  mv -f "$2.kss-new" "$2"
}

# Tells a running libvirtd (or the modular virtqemud) to look for hooks again: it finds
# a new hook only at start or on SIGHUP. By its pid file, never by name.
reload_libvirt() {
  local daemon pid
  for daemon in libvirtd virtqemud; do
    pid=$(cat "/run/$daemon.pid" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -HUP "$pid" 2>/dev/null; then say "told $daemon to look for hooks again"; fi
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
  for hook in "$HOOKS_DIR/qemu" "$HOOKS_DIR/qemu.d/kvm-snapshot-sync"; do
    if ours "$hook"; then rm -f "$hook" && say "removed the hook $hook"; fi
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
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x dist/kvm-snapshot-sync ]]; then
  command -v npm >/dev/null || fail 'dist/kvm-snapshot-sync is not built and npm is missing: install Node.js 20+ and npm, then run this again'
  say 'building dist/kvm-snapshot-sync'
  npm ci && npm run build
fi

if place dist/kvm-snapshot-sync "$LIB_DIR/kvm-snapshot-sync"; then say "installed $LIB_DIR/kvm-snapshot-sync"; fi
install -d -m 0755 "$BIN_DIR"
for name in kvm-snapshot-sync kss; do
  [[ $(readlink "$BIN_DIR/$name" 2>/dev/null) == "$LIB_DIR/kvm-snapshot-sync" ]] || ln -sfn "$LIB_DIR/kvm-snapshot-sync" "$BIN_DIR/$name"
done
KSS="$LIB_DIR/kvm-snapshot-sync"

# The hook: ours at hooks/qemu, unless another program's hook is there.
if [[ -e $HOOKS_DIR/qemu ]] && ! ours "$HOOKS_DIR/qemu"; then
  hook="$HOOKS_DIR/qemu.d/kvm-snapshot-sync"
  say "$HOOKS_DIR/qemu belongs to another program: left as it is; the hook goes to $hook"
else
  hook="$HOOKS_DIR/qemu"
fi
hook_changed=false
if place "$KSS" "$hook"; then
  hook_changed=true
  say "installed the libvirt hook $hook"
fi

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
say "kvm-snapshot-sync $("$KSS" --version) is installed; next: kss enable VM (see README, \"Daily use\")"
