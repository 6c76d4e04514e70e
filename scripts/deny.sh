#!/usr/bin/env bash
# cargo-deny over the dependency graph (deny.toml): licenses, bans and
# sources always; advisories when the RustSec database (on GitHub) can be
# fetched, which GitHub Actions can and some machines cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny" >&2
  cargo install --locked cargo-deny --version 0.20.2
fi
cargo deny --locked --log-level error check licenses bans sources
if git ls-remote https://github.com/RustSec/advisory-db HEAD >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "deny: advisories NOT checked: the RustSec database on github.com is unreachable from here (CI checks them)" >&2
fi
