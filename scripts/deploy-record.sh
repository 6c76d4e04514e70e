#!/usr/bin/env bash
# Reads and writes the commit an environment last received of a service,
# kept in SSM Parameter Store as /<app>/<env>/<service>/deployed-commit.
# Used by .github/workflows/deploy-service.yml, with AWS credentials.
#
#   scripts/deploy-record.sh plan     sets deploy=true|false in $GITHUB_OUTPUT
#                                     (scripts/should-deploy.sh decides)
#   scripts/deploy-record.sh record   records $GITHUB_SHA, after a deploy
#
# Reads SERVICE, ENVIRONMENT and GITHUB_SHA from the environment. A
# missing parameter means nothing was deployed yet; any other failure to
# read it stops the job, because guessing could put older code back.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:?usage: scripts/deploy-record.sh plan|record}
: "${SERVICE:?}" "${ENVIRONMENT:?}" "${GITHUB_SHA:?}"
app=$(sed -n 's/^application: *//p' deploy/copilot/.workspace)
parameter=/$app/$ENVIRONMENT/$SERVICE/deployed-commit

case $action in
  plan)
    if deployed=$(aws ssm get-parameter --name "$parameter" \
        --query Parameter.Value --output text 2>"${RUNNER_TEMP:-/tmp}/ssm-error"); then
      :
    elif grep -q ParameterNotFound "${RUNNER_TEMP:-/tmp}/ssm-error"; then
      deployed=none
    else
      cat "${RUNNER_TEMP:-/tmp}/ssm-error" >&2
      exit 1
    fi
    status=0
    scripts/should-deploy.sh "$SERVICE" "$deployed" "$GITHUB_SHA" || status=$?
    case $status in
      0) echo deploy=true >> "$GITHUB_OUTPUT" ;;
      1) echo deploy=false >> "$GITHUB_OUTPUT" ;;
      *) exit "$status" ;;
    esac
    ;;
  record)
    aws ssm put-parameter --name "$parameter" --type String --overwrite \
      --value "$GITHUB_SHA" > /dev/null
    echo "deploy-record: $parameter = $GITHUB_SHA" >&2
    ;;
  *)
    echo "usage: scripts/deploy-record.sh plan|record" >&2
    exit 2
    ;;
esac
