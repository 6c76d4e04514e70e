#!/usr/bin/env bash
# Installs the AWS Copilot CLI at a pinned version into a directory.
#
#   scripts/install-copilot.sh VERSION DIR     e.g. v1.34.1 "$RUNNER_TEMP/bin"
#
# Copilot reached end of support on 2026-06-12 and v1.34.1 is its last
# release (deploy/README.md), so the version is pinned rather than "latest".
set -euo pipefail

version=${1:?usage: scripts/install-copilot.sh VERSION DIR}
dir=${2:?usage: scripts/install-copilot.sh VERSION DIR}
case $(uname -m) in
  x86_64) asset=copilot-linux ;;
  aarch64) asset=copilot-linux-arm64 ;;
  *) echo "install-copilot: no Copilot build for $(uname -m)" >&2; exit 1 ;;
esac

mkdir -p "$dir"
curl --fail --silent --show-error --location --retry 3 \
  --output "$dir/copilot" \
  "https://github.com/aws/copilot-cli/releases/download/$version/$asset"
chmod +x "$dir/copilot"
installed=$("$dir/copilot" --version)
if [[ $installed != *"$version"* ]]; then
  echo "install-copilot: expected $version, got: $installed" >&2
  exit 1
fi
echo "install-copilot: $installed in $dir" >&2
