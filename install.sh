#!/usr/bin/env bash
# Installs kvm-snapshot-sync on this machine (Debian/Ubuntu, as root).
#
#   sudo ./install.sh              the executable, and the kvm-snapshot-sync and kss commands
#   sudo ./install.sh --uninstall  removes them again
#
# So far this installs the executable only. The libvirt hook, the configuration and the
# state and log directories come with the hook lifecycle (see README, "Status").
set -euo pipefail
cd "$(dirname "$0")"

LIB_DIR=/usr/local/lib/kvm-snapshot-sync
BIN_DIR=/usr/local/bin

if [[ $EUID -ne 0 ]]; then
  echo "install.sh: run it as root: sudo ./install.sh" >&2
  exit 1
fi

if [[ ${1:-} == --uninstall ]]; then
  rm -f "$BIN_DIR/kvm-snapshot-sync" "$BIN_DIR/kss" "$LIB_DIR/kvm-snapshot-sync"
  rmdir "$LIB_DIR" 2>/dev/null || true
  echo "kvm-snapshot-sync removed" >&2
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "install.sh: unknown option $1 (use --uninstall, or nothing)" >&2
  exit 2
fi

if [[ ! -x dist/kvm-snapshot-sync ]]; then
  echo "building dist/kvm-snapshot-sync" >&2
  npm ci && npm run build
fi
install -D -m 0755 dist/kvm-snapshot-sync "$LIB_DIR/kvm-snapshot-sync"
ln -sfn "$LIB_DIR/kvm-snapshot-sync" "$BIN_DIR/kvm-snapshot-sync"
ln -sfn "$LIB_DIR/kvm-snapshot-sync" "$BIN_DIR/kss"
echo "installed kvm-snapshot-sync $("$LIB_DIR/kvm-snapshot-sync" --version) in $LIB_DIR (commands: kvm-snapshot-sync, kss)" >&2
