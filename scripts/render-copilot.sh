#!/usr/bin/env bash
# Writes the CloudFormation that AWS Copilot deploys for both environments
# and both services, offline: tools/copilot-render, built inside Copilot's
# own source (the copilot-cli Go module at the version CD installs), renders
# deploy/copilot's manifests, addons and overrides. What needs AWS (account,
# artifact bucket, pushed image) is stood in for with fixed values
# (tools/copilot-render/main.go says which).
#
#   scripts/render-copilot.sh OUT_DIR [-overrides=false] [-envs test] [-services producer]
#
# OUT_DIR/<env>/ receives <env>.env.yml, <service>-<env>.stack.yml and
# <service>.addons.stack.yml. The renderer is built once into
# .run/validators/go/bin from the Go module proxy (about two minutes on a
# fresh machine) and again when its source or the version changes.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: scripts/render-copilot.sh OUT_DIR [renderer flags]}
shift
# As .github/workflows/deploy-service.yml's COPILOT_VERSION; the module's
# hash as the Go checksum database has it.
version=v1.34.1
module_sum=h1:ejZ521faNy4ocepBvlsquHXOgIQ8a0QQqeuTXet9Eag=

tools=$PWD/.run/validators/go
renderer=$tools/bin/copilot-render
build="$version $(sha256sum tools/copilot-render/main.go | cut -c1-64)"
if [[ ! -x $renderer || $(cat "$tools/copilot-render-version" 2>/dev/null) != "$build" ]]; then
  echo "render-copilot: building the renderer against copilot-cli $version" >&2
  download=$(go mod download -json "github.com/aws/copilot-cli@$version")
  field() { python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], ""))' "$1" <<<"$download"; }
  if [[ $(field Sum) != "$module_sum" ]]; then
    echo "render-copilot: copilot-cli $version has hash $(field Sum), not $module_sum" >&2
    exit 1
  fi
  src=$PWD/.run/copilot-render/src
  rm -rf "$src"
  mkdir -p "$(dirname "$src")" "$tools/bin"
  cp -R "$(field Dir)" "$src"
  chmod -R u+w "$src"
  # Copilot's release build copies its custom resources' code into the
  # embedded templates (minified; that changes only their upload keys).
  mkdir -p "$src/internal/pkg/template/templates/custom-resources"
  cp "$src"/cf-custom-resources/lib/*.js "$src/internal/pkg/template/templates/custom-resources/"
  mkdir -p "$src/cmd/copilot-render"
  cp tools/copilot-render/main.go "$src/cmd/copilot-render/"
  (cd "$src" && go build -ldflags "-X github.com/aws/copilot-cli/internal/pkg/version.Version=$version" \
    -o "$renderer" ./cmd/copilot-render)
  echo "$build" > "$tools/copilot-render-version"
fi
mkdir -p "$out"
"$renderer" -workspace deploy -out "$out" "$@"
