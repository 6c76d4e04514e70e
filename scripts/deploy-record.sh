#!/usr/bin/env bash
# Reads and writes what an environment last received of a service, kept in
# SSM Parameter Store: the commit, /<app>/<env>/<service>/deployed-commit,
# and the image by digest, /<app>/<env>/<service>/deployed-image.
# Used by .github/workflows/deploy-service.yml, with AWS credentials.
#
#   scripts/deploy-record.sh plan     sets deploy=true|false in $GITHUB_OUTPUT:
#                                     whether ENVIRONMENT needs GITHUB_SHA
#                                     (scripts/should-deploy.sh decides)
#   scripts/deploy-record.sh promote  sets deploy=true|false, commit and image
#                                     in $GITHUB_OUTPUT: whether ENVIRONMENT
#                                     needs what SOURCE_ENVIRONMENT (test)
#                                     last received, and what that is
#   scripts/deploy-record.sh record   records DEPLOYED_COMMIT (default
#                                     GITHUB_SHA) and IMAGE, after a deploy
#
# The producer goes only where the consumer already knows every event type
# it can write (see consumer_knows_every_type_of below); plan and promote
# wait up to DEPLOY_ORDER_WAIT_SECS (default 0) for that.
#
# Reads SERVICE, ENVIRONMENT and GITHUB_SHA from the environment. Promoting
# from the record rather than from the run that deployed test means that a
# prod deploy that failed, or was never approved, is caught up by the next
# run, whatever that run changed. A missing parameter means nothing was
# deployed yet; any other failure to read one stops the job, because
# guessing could put older code back.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:?usage: scripts/deploy-record.sh plan|promote|record}
: "${SERVICE:?}" "${ENVIRONMENT:?}" "${GITHUB_SHA:?}"
app=$(sed -n 's/^application: *//p' deploy/copilot/.workspace)
errors=${RUNNER_TEMP:-/tmp}/ssm-error

# The value of parameter $2 of environment $1 for service $3 (default this
# one), or `none`.
recorded() {
  local value
  if value=$(aws ssm get-parameter --name "/$app/$1/${3:-$SERVICE}/$2" \
      --query Parameter.Value --output text 2>"$errors"); then
    echo "$value"
  elif grep -q ParameterNotFound "$errors"; then
    echo none
  else
    cat "$errors" >&2
    return 1
  fi
}

record() {
  aws ssm put-parameter --name "/$app/$ENVIRONMENT/$SERVICE/$1" --type String --overwrite \
    --value "$2" > /dev/null
  echo "deploy-record: /$app/$ENVIRONMENT/$SERVICE/$1 = $2" >&2
}

# The event types (ce_type) the code of commit $1 knows, one per line: a
# schema per type under docs/events/ (libs/events' contract test keeps them
# equal to UserEvent::ACCEPTED_TYPES). None for `none`.
event_types() {
  [[ $1 == none ]] && return 0
  git ls-tree --name-only "$1" -- docs/events/ \
    | sed -n 's|^docs/events/\(.*\)\.json$|\1|p' | grep -vx headers | sort || true
}

# Whether the consumer that ENVIRONMENT last received knows every event type
# of commit $1. A producer that wrote a type the running consumer does not
# know would have its events dead-lettered (unknown type), so a new type
# reaches the producer only after the consumer: within a run, this waits
# for the consumer's deploy (DEPLOY_ORDER_WAIT_SECS, every 30 s); past
# that, the producer is not deployed, and a later run, or promote.yml,
# brings it once the consumer has the type.
consumer_knows_every_type_of() {
  local commit=$1 consumer missing
  local deadline=$((SECONDS + ${DEPLOY_ORDER_WAIT_SECS:-0}))
  while :; do
    consumer=$(recorded "$ENVIRONMENT" deployed-commit consumer)
    missing=$(comm -23 <(event_types "$commit") <(event_types "$consumer") | paste -sd, -)
    [[ -z $missing ]] && return 0
    if ((SECONDS >= deadline)); then
      echo "deploy-record: not deploying the producer at ${commit:0:12} to $ENVIRONMENT: the consumer there" \
        "(at ${consumer:0:12}) does not know the event type(s) $missing, and would dead-letter them;" \
        "the consumer deploys first, and a later run or promote.yml brings the producer" >&2
      return 1
    fi
    sleep "${DEPLOY_ORDER_POLL_SECS:-30}"
  done
}

# Sets deploy=true|false in $GITHUB_OUTPUT: whether an environment that
# last received $1 should get commit $2.
decide() {
  local status=0
  scripts/should-deploy.sh "$SERVICE" "$1" "$2" || status=$?
  case $status in
    0)
      if [[ $SERVICE == producer ]] && ! consumer_knows_every_type_of "$2"; then
        echo deploy=false >> "$GITHUB_OUTPUT"
      else
        echo deploy=true >> "$GITHUB_OUTPUT"
      fi
      ;;
    1) echo deploy=false >> "$GITHUB_OUTPUT" ;;
    *) exit "$status" ;;
  esac
}

case $action in
  plan)
    deployed=$(recorded "$ENVIRONMENT" deployed-commit)
    decide "$deployed" "$GITHUB_SHA"
    ;;
  promote)
    source=${SOURCE_ENVIRONMENT:-test}
    commit=$(recorded "$source" deployed-commit)
    image=$(recorded "$source" deployed-image)
    if [[ $commit == none || $image != *@sha256:* ]]; then
      echo "deploy-record: $source has no recorded commit and image digest of $SERVICE to promote" \
        "(commit $commit, image $image); deploy it to $source first" >&2
      echo deploy=false >> "$GITHUB_OUTPUT"
      exit 0
    fi
    deployed=$(recorded "$ENVIRONMENT" deployed-commit)
    decide "$deployed" "$commit"
    { echo "commit=$commit"; echo "image=$image"; } >> "$GITHUB_OUTPUT"
    ;;
  record)
    : "${IMAGE:?the deployed image, by digest}"
    # The image first: should the second write fail, a promotion may take
    # the newer image under the older commit, which only makes a later one
    # deploy again; the other order could record a newer commit over an
    # older image, and prod would never get the newer one.
    record deployed-image "$IMAGE"
    record deployed-commit "${DEPLOYED_COMMIT:-$GITHUB_SHA}"
    ;;
  *)
    echo "usage: scripts/deploy-record.sh plan|promote|record" >&2
    exit 2
    ;;
esac
