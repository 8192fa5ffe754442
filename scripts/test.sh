#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Used by the README and by CI (.ci/run).
#
# - Python packages: this project with its [test] extra (pip, into the current Python).
# - Debian packages listed in DEBIAN_PACKAGES: installed with apt-get when running as root; otherwise the
#   script says which are missing. Under CI (CI=true) a missing package is a failure, never a skip.
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/edge -k routing`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# Binaries the tests run for real: Prometheus (+ promtool) for the dashboards/alert tests, Redis for rate limits,
# Chromium (headless, driven over the DevTools protocol) for the admin page, kubectl (its built-in kustomize) for
# the Kubernetes manifests (from Google's apt repository, configured on these machines).
DEBIAN_PACKAGES=(prometheus redis-server chromium kubectl)
declare -A BINARY_OF=([prometheus]=prometheus [redis-server]=redis-server [chromium]=chromium [kubectl]=kubectl)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  command -v "${BINARY_OF[$pkg]:-$pkg}" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "scripts/test.sh: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    if [[ "${CI:-}" == "true" ]]; then exit 1; fi
  fi
fi

echo "scripts/test.sh: installing gatewatch[test]"
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

exec "$PYTHON" -m pytest "$@"
