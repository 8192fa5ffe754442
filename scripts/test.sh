#!/usr/bin/env bash
# Install everything the test suite needs, then run it. Used by the README and by CI (.ci/run).
#
# - Python packages: this project with its [test] extra (pip, into the current Python).
# - Debian packages listed in DEBIAN_PACKAGES: installed with apt-get when running as root; otherwise the
#   script says which are missing. Under CI (CI=true) a missing package is a failure, never a skip.
# - The install compiles the hot path (setup.py, docs/compiled.md). Without arguments the whole suite runs on that
#   build, then the data-plane, engine and telemetry tests run again in pure Python (GATEWATCH_PURE_PYTHON=1), so
#   both modes are proven. Under CI an install that did not compile is a failure, never a silent pure run.
# Extra arguments go to pytest, for one run on the build as it is, e.g. `scripts/test.sh tests/edge -k routing`.
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

echo "scripts/test.sh: installing gatewatch[test] (compiling the hot path takes a few minutes on 2 cores)"
"$PYTHON" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'

# What the install built, as the runtime sees it (gatewatch/build_mode.py): "compiled|pure<TAB>one line".
read -r built described < <("$PYTHON" -c 'from gatewatch import build_mode as b; s = b.state()
print("compiled" if s.compiled else "pure", s.describe(), sep="\t")')
echo "scripts/test.sh: hot path: $described"
if [[ "$built" == "compiled" ]]; then
  export GATEWATCH_EXPECT_COMPILED=1  # tests/test_build_mode.py then insists that every hot module runs compiled
elif [[ "${CI:-}" == "true" ]]; then
  echo "scripts/test.sh: CI tests the compiled build, but the install is: $described" >&2
  exit 1
fi

if (($#)); then
  exec "$PYTHON" -m pytest "$@"
fi
status=0
"$PYTHON" -m pytest || status=$?
if [[ "$built" == "compiled" ]]; then
  # The same source uncompiled: the data plane, the engine and telemetry (their tests start real gatewatch
  # processes too, which inherit the variable).
  echo "scripts/test.sh: again in pure Python (GATEWATCH_PURE_PYTHON=1): data plane, engine, telemetry"
  GATEWATCH_PURE_PYTHON=1 "$PYTHON" -m pytest -p no:cacheprovider tests/io tests/proxy tests/telemetry \
    tests/test_build_mode.py || status=$?
fi
exit $status
