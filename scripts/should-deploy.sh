#!/usr/bin/env bash
# Decides whether a commit of main should be deployed, as one service, to an
# environment that last received DEPLOYED (the commit recorded by the last
# successful deploy there, or `none`).
#
#   scripts/should-deploy.sh SERVICE DEPLOYED COMMIT
#
# Exit status: 0 deploy, 1 skip, 2 error (bad arguments, unknown COMMIT).
# The reason is printed on standard error either way.
#
# Called by .github/workflows/deploy-service.yml after CI passed for
# COMMIT. Deciding from the recorded commit rather than from the push's own
# diff means that
# - a change whose deploy was cancelled while pending (GitHub keeps one
#   pending run per concurrency group) or that failed is deployed with
#   the next commit that passes, as nothing recorded it;
# - a run that finishes after a newer commit's deploy never puts the older
#   commit back: the recorded commit descends from it, so it skips.
set -euo pipefail

service=${1:?usage: scripts/should-deploy.sh SERVICE DEPLOYED COMMIT}
deployed=${2:?usage: scripts/should-deploy.sh SERVICE DEPLOYED COMMIT}
commit=${3:?usage: scripts/should-deploy.sh SERVICE DEPLOYED COMMIT}
cd "$(dirname "$0")/.."

# What changes what a service deploys: its code and image, the shared
# libraries, the build's inputs, its Copilot directory and the deploy's own
# machinery (this script included).
builds_service() {
  case $1 in
    "services/$service/"* | libs/* | Cargo.lock | Cargo.toml | .dockerignore \
      | "deploy/copilot/$service/"* | deploy/copilot/.workspace | deploy/keys/* \
      | scripts/install-copilot.sh | scripts/should-deploy.sh \
      | .github/workflows/deploy-service.yml)
      return 0 ;;
  esac
  return 1
}

say() { echo "should-deploy: $service at ${commit:0:12}: $*" >&2; }

if [[ ! -d services/$service ]]; then
  echo "should-deploy: no service named '$service' (services/$service)" >&2
  exit 2
fi
if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
  echo "should-deploy: unknown commit $commit (is the history fetched?)" >&2
  exit 2
fi
if [[ $deployed == none ]]; then
  say "deploy: no deploy recorded"
  exit 0
fi
if ! git cat-file -e "$deployed^{commit}" 2>/dev/null; then
  say "deploy: the recorded commit $deployed is not in this history"
  exit 0
fi
if git merge-base --is-ancestor "$commit" "$deployed"; then
  say "skip: ${deployed:0:12} is deployed, which already contains it"
  exit 1
fi
while IFS= read -r path; do
  if builds_service "$path"; then
    say "deploy: $path changed since ${deployed:0:12}"
    exit 0
  fi
done < <(git diff --name-only --no-renames "$deployed" "$commit")
say "skip: nothing it is built or deployed from changed since ${deployed:0:12}"
exit 1
