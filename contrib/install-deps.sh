#!/usr/bin/env bash
# Installs every tool imgforge's builds and tests use on Debian 12 (bookworm),
# as root or with sudo. One install path for the README's first command and
# for .ci/run, so the two cannot drift apart.
#
#   contrib/install-deps.sh          the local builder's tools and the tests' tools
#   contrib/install-deps.sh --build  only what `imgforge build` of a local image needs
#
# Tools the tests run for real: Packer 1.6.6 (Debian), shellcheck, the
# disk-image tools used to build fixture VHDs, openssl for the TLS
# certificate of Azurite's OAuth mode, and the local builder's: mmdebstrap
# (the Debian 12 root), mtools and dosfstools (the EFI partition), QEMU and
# OVMF (the boot check), xorriso (its provisioning CD, as Azure attaches
# ovf-env.xml) and OpenSSH's client (its look from inside), nftables and iptables (to prove the host's firewall
# is untouched by a build), GNU time (the peak RSS in tests/budget.rs), and
# bsdutils for `script` (the pseudo-terminal test of the progress bars;
# Essential on Debian, named so nothing assumes it). Node.js and npm run
# Azurite (pinned in package.json / package-lock.json). rpm (rpmbuild and an
# SQLite rpmdb, as EL 9 keeps it) makes the package database `inspect` reads.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

build=(packer shellcheck mmdebstrap fdisk e2fsprogs dosfstools mtools qemu-utils qemu-system-x86 ovmf xorriso openssh-client)
tests=(fakeroot xfsprogs openssl nftables iptables bsdutils time nodejs npm python3-venv rpm)
case "${1:-}" in
  --build) packages=("${build[@]}") ;;
  "") packages=("${build[@]}" "${tests[@]}") ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# npm may come with Node.js from elsewhere (NodeSource, nvm): a working npm is enough.
if command -v npm >/dev/null && command -v node >/dev/null; then
  rest=()
  for p in "${missing[@]}"; do case "$p" in nodejs|npm) ;; *) rest+=("$p") ;; esac; done
  missing=("${rest[@]}")
fi
apt_updated=""
apt_install() {
  [ -n "$apt_updated" ] || { $sudo apt-get update -q; apt_updated=1; }
  $sudo apt-get install -y -q --no-install-recommends "$@"
}
# Some images carry qemu-utils from bookworm-backports; qemu-system-x86 must
# then come from there too (the two versions must match, or apt refuses
# with "unmet dependencies").
qemu_utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
backports=()
if [[ "$qemu_utils" == *bpo12* ]] && [[ " ${missing[*]} " == *" qemu-system-x86 "* ]]; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: qemu-utils $qemu_utils is from bookworm-backports; adding that suite for qemu-system-x86"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      | $sudo tee /etc/apt/sources.list.d/imgforge-backports.sources >/dev/null
    apt_updated=""
  fi
  backports=(qemu-system-x86)
  rest=()
  for p in "${missing[@]}"; do [ "$p" = qemu-system-x86 ] || rest+=("$p"); done
  missing=("${rest[@]}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  apt_install "${missing[@]}"
fi
if [ "${#backports[@]}" -gt 0 ]; then
  echo "install-deps: installing ${backports[*]} from bookworm-backports"
  apt_install -t bookworm-backports "${backports[@]}"
fi
# The tests validate imgforge's SBOMs with the formats' own validators, from
# PyPI into a virtual environment of their own (pinned; Debian packages
# neither): spdx-tools (SPDX 2.3) and cyclonedx-python-lib with its bundled
# CycloneDX 1.5 JSON schema. tests/sbom_validate.py runs them.
if [ "${1:-}" != --build ]; then
  venv=${IMGFORGE_SBOM_TOOLS:-/var/cache/imgforge/sbom-tools}
  if ! "$venv/bin/python" -c 'import spdx_tools, cyclonedx.validation.json' 2>/dev/null; then
    echo "install-deps: the SBOM validators into $venv"
    $sudo mkdir -p "$(dirname "$venv")"
    $sudo python3 -m venv "$venv"
    $sudo "$venv/bin/pip" install -q 'spdx-tools==0.8.5' 'cyclonedx-python-lib[json-validation]==11.12.0'
  fi
fi
echo "install-deps: all of ${packages[*]} present"
