#!/usr/bin/env bash
# Installs the Debian packages the tests need (run as root on Debian 12). Packages that
# are already there are not fetched again, so a warm machine skips apt entirely.
set -euo pipefail

packages=(
  qemu-utils     # qemu-img, qemu-io: the layer engine and its tests
  binutils       # strip: the build drops the Node binary's debug symbols
  openssh-client # ssh: the SSH transport
  openssh-server # sshd: the simulated NAS, in its own network namespace
  iproute2       # ip, tc: that namespace, its veth link and the 1 Gbit shaping
  zstd           # compression of layer streams
  openssl        # fast SHA-256 on the NAS side
  rsync          # a baseline in the transfer benchmark
  btrfs-progs    # mkfs.btrfs: a loop-mounted btrfs for the NOCOW tests
  e2fsprogs      # chattr, lsattr
  qemu-system-x86        # the VMs of the end-to-end tests
  qemu-system-common     # qemu-storage-daemon: the cut of a session after its last checkpoint
  libvirt-daemon-system  # libvirtd and virtlogd, one pair per simulated host
  libvirt-clients        # virsh
  ovmf                   # UEFI firmware and its variable store template: the whole-VM tests
  swtpm                  # the emulated TPM 2.0 of those tests
  swtpm-tools            # swtpm_setup, which libvirt runs to make a new TPM state
  lintian                # the Debian package is checked by it
  man-db                 # man: the man page, as a person reads it
  bash-completion        # bash's completion loader, which finds ours by the command's name
  zsh                    # zsh and its compinit, for our zsh completion
  libnotify-bin          # notify-send: the desktop notifications
  dbus-daemon            # a real session bus for them (dbus-daemon --session)
  python3-gi             # GDBus, for the notification server on that bus (test/fixtures)
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]} > 0)); then
  echo "installing Debian packages: ${missing[*]}" >&2
  # The tests start their own sshd; the package must not start one on port 22.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
