#!/usr/bin/env bash
# Makes sure the browser test (tests/e2e/tests/browser.rs) has what it
# needs: a Chromium (Debian's `chromium` package, installed here when
# missing and apt is available; Google Chrome on GitHub's runners also
# does) and playwright-core, pinned, in .run/browser. Prints the browser's
# path.
set -euo pipefail
cd "$(dirname "$0")/.."

find_browser() {
  for candidate in "${CHROMIUM:-}" /usr/bin/chromium /usr/bin/google-chrome /usr/bin/chromium-browser; do
    if [[ -n $candidate && -x $candidate ]]; then echo "$candidate"; return 0; fi
  done
  return 1
}

if ! find_browser >/dev/null; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
    echo "browser: installing Debian's chromium" >&2
    # A fresh machine's package lists may be empty until updated.
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "browser: no Chromium found; install one (apt-get install chromium) or set CHROMIUM" >&2
    exit 1
  fi
fi
if [[ ! -d .run/browser/node_modules/playwright-core ]]; then
  echo "browser: installing playwright-core into .run/browser" >&2
  npm install --silent --no-audit --no-fund --prefix .run/browser playwright-core@1.65.1
fi
find_browser
