#!/usr/bin/env bash
# Installs the AWS Copilot CLI at a pinned version into a directory, after
# checking its PGP signature against the pinned Amazon ECS release key.
#
#   scripts/install-copilot.sh VERSION DIR     e.g. v1.34.1 "$RUNNER_TEMP/bin"
#
# Copilot reached end of support on 2026-06-12 and v1.34.1 is its last
# release (deploy/README.md), so the version is pinned rather than "latest".
#
# Copilot signs each executable with a detached ASCII signature beside it
# (`<asset>.asc`), made by the Amazon ECS key (Copilot's docs, "Verify the
# installation"). The key is kept in deploy/keys/amazon-ecs.asc, and a
# download counts only when gpg reports a valid signature by a key whose
# primary fingerprint is the one below; anything else stops the install
# before the binary is copied into DIR. Needs gpg (on GitHub's runners).
# COPILOT_RELEASES overrides where releases are downloaded from (tests).
set -euo pipefail

version=${1:?usage: scripts/install-copilot.sh VERSION DIR}
dir=${2:?usage: scripts/install-copilot.sh VERSION DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
releases=${COPILOT_RELEASES:-https://github.com/aws/copilot-cli/releases/download}
# "Amazon ECS <ecs-security@amazon.com>", RSA 4096, no expiry.
fingerprint=F34C3DDAE72926B079BEAEC6BCE9D9A42D51784F
case $(uname -m) in
  x86_64) asset=copilot-linux ;;
  aarch64) asset=copilot-linux-arm64 ;;
  *) echo "install-copilot: no Copilot build for $(uname -m)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for file in "$asset" "$asset.asc"; do
  curl --fail --silent --show-error --location --retry 3 \
    --output "$work/$file" "$releases/$version/$file"
done

export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --import "$root/deploy/keys/amazon-ecs.asc" 2>/dev/null
if ! gpg --batch --with-colons --fingerprint | grep -q "^fpr:::::::::$fingerprint:"; then
  echo "install-copilot: deploy/keys/amazon-ecs.asc is not the key $fingerprint" >&2
  exit 1
fi
# VALIDSIG's last field is the signing key's primary fingerprint.
status=$(gpg --batch --status-fd 1 --verify "$work/$asset.asc" "$work/$asset" 2>/dev/null || true)
if ! grep -q "^\[GNUPG:\] VALIDSIG .* $fingerprint\$" <<<"$status"; then
  echo "install-copilot: $asset $version: no valid signature by $fingerprint; not installed" >&2
  exit 1
fi

mkdir -p "$dir"
install -m 0755 "$work/$asset" "$dir/copilot"
installed=$("$dir/copilot" --version)
if [[ $installed != *"$version"* ]]; then
  echo "install-copilot: expected $version, got: $installed" >&2
  exit 1
fi
echo "install-copilot: $installed in $dir (signature by $fingerprint verified)" >&2
