#!/usr/bin/env bash
# Installs kvm-snapshot-sync on this machine (Debian 12 and alikes, as root) from the
# clone; the Debian package (npm run package) installs the same things under /usr:
#
#   sudo ./install.sh [--nas URL] [--host NAME] [--ssh-identity FILE] [--ssh-known-hosts FILE]
#   sudo ./install.sh --uninstall
#
# - the packages it needs at run time (qemu-utils, openssh-client, zstd, openssl);
# - the executable in /usr/local/lib/kvm-snapshot-sync/ (built first if dist/ lacks it),
#   with the commands kvm-snapshot-sync and kss in /usr/local/bin, the man page kss(1)
#   and bash and zsh completion under /usr/local/share;
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
# What goes where, and each step, is packaging/layout.sh (shared with the package). It
# stops at the first failure, and never leaves a partial executable or hook: each is
# copied under a temporary name, checked to run, and renamed into place.
set -euo pipefail
cd "$(dirname "$0")"
SAY_AS=install.sh
source packaging/layout.sh
layout_under /usr/local

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
  remove_hooks
  for name in "${COMMANDS[@]}"; do rm -f -- "$BIN_DIR/$name"; done
  rm -f -- "$KSS"
  rmdir "$LIB_DIR" 2>/dev/null || true
  for entry in "${DOC_FILES[@]}" "${DOC_LINKS[@]}"; do rm -f -- "${entry#*:}"; done
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

if [[ ! -x dist/kvm-snapshot-sync || ! -e dist/kss.1 ]]; then
  command -v npm >/dev/null || fail 'dist/kvm-snapshot-sync is not built and npm is missing: install Node.js 20+ and npm, then run this again'
  say 'building dist/kvm-snapshot-sync'
  npm ci
  npm run build
fi

if place dist/kvm-snapshot-sync "$KSS"; then say "installed $KSS"; fi
install -d -m 0755 "$BIN_DIR"
for name in "${COMMANDS[@]}"; do
  [[ $(readlink "$BIN_DIR/$name" 2>/dev/null) == "$KSS" ]] || ln -sfn "$KSS" "$BIN_DIR/$name"
done
for entry in "${DOC_FILES[@]}"; do
  from="dist/${entry%%:*}" target=${entry#*:}
  cmp -s "$from" "$target" || install -D -m 0644 "$from" "$target" || fail "cannot install $target"
done
for entry in "${DOC_LINKS[@]}"; do
  link=${entry%%:*} target=$(basename "${entry#*:}")
  [[ $(readlink "$link" 2>/dev/null) == "$target" ]] || ln -sfn "$target" "$link" || fail "cannot link $link"
done

install_hook
make_dirs
configure "${settings[@]}"

if $hook_changed; then reload_libvirt; fi
version=$("$KSS" --version)
say "kvm-snapshot-sync $version is installed; next: kss enable VM (see README, \"Daily use\")"
