#!/usr/bin/env bash
# Writes the CloudFormation that Copilot deploys for one service in one
# environment, with its assets uploaded, and lints it: the way out of
# Copilot (deploy/README.md, "Leaving Copilot").
#
#   scripts/package-cloudformation.sh SERVICE ENV DIR
#
# DIR/<ENV>/ receives what `copilot svc package --upload-assets` writes:
# the service stack (<service>-<env>.stack.yml), its parameters
# (<service>-<env>.params.json) and the addons stack it nests, with the
# addresses of the uploaded assets filled in. Every template must pass
# cfn-lint: the addons with no finding at all, Copilot's service stack with
# none but the checks deploy/cfn-lint-copilot.yml names.
# Needs copilot (scripts/install-copilot.sh), cfn-lint, and AWS credentials
# for an account where the application and environment exist: Copilot
# reads them to fill in the template.
set -euo pipefail

service=${1:?usage: scripts/package-cloudformation.sh SERVICE ENV DIR}
environment=${2:?usage: scripts/package-cloudformation.sh SERVICE ENV DIR}
dir=${3:?usage: scripts/package-cloudformation.sh SERVICE ENV DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir/$environment"
out=$(cd "$dir/$environment" && pwd)

# Copilot finds deploy/copilot only from deploy/ (or below).
(cd "$root/deploy" && copilot svc package --name "$service" --env "$environment" \
  --output-dir "$out" --upload-assets)

shopt -s nullglob
stacks=("$out/$service-$environment.stack.yml")
addons=("$out"/*.addons.stack.yml)
if [[ ! -f ${stacks[0]} ]]; then
  echo "package-cloudformation: copilot wrote no $service-$environment.stack.yml into $out" >&2
  exit 1
fi
# Our template (the addons) with no check ignored; Copilot's with only the
# checks that deploy/cfn-lint-copilot.yml names, each with its reason.
if [[ ${#addons[@]} -gt 0 ]]; then
  cfn-lint -- "${addons[@]}"
fi
cfn-lint --config-file "$root/deploy/cfn-lint-copilot.yml" -- "${stacks[@]}"
echo "package-cloudformation: ${stacks[*]##*/} ${addons[*]##*/} in $out pass cfn-lint" >&2
