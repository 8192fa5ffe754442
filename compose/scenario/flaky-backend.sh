#!/bin/sh
# backend-b's life in the demo: serve for FLAKY_UP_S seconds, be stopped for FLAKY_DOWN_S seconds, forever.
#
# The container stays up (so its name keeps resolving) while the backend process is stopped: the balancer's
# connections to backend-b are refused, which is what a crashed or redeployed instance looks like. This needs no
# Docker socket and works with plain `docker compose up`. Arguments are passed to `gatewatch backend`.
set -u
UP_S="${FLAKY_UP_S:-180}"
DOWN_S="${FLAKY_DOWN_S:-45}"
pid=""
stop() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  exit 0
}
trap stop TERM INT
while :; do
  echo "flaky-backend: up for ${UP_S}s: gatewatch backend $*"
  timeout -s TERM "$UP_S" gatewatch backend "$@" &
  pid=$!
  wait "$pid"
  echo "flaky-backend: stopped; restarting in ${DOWN_S}s"
  sleep "$DOWN_S" &
  pid=$!
  wait "$pid"
done
