#!/usr/bin/env bash
# Installs the Debian packages the tests need (run as root on Debian 12). Packages that
# are already there are not fetched again, so a warm machine skips apt entirely.
set -euo pipefail

packages=(
  qemu-utils # qemu-img, qemu-io: the layer engine and its tests
  binutils   # strip: the build drops the Node binary's debug symbols
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  echo "installing Debian packages: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
