#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 machine, then run it.
#   sudo bash tests/run_all.sh [pytest args...]
# Installs: the Python package with its test extras, the local CSC 2.1 mimic (GAVO DaCHS on
# PostgreSQL, served on 127.0.0.1:18080) and the real SAMP peers (TOPCAT, DS9, Aladin, JSAMP,
# STILTS under Xvfb). Idempotent: a second run only starts what is not running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run_all.sh: run as root (it installs Debian packages)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
t0=$SECONDS
if [ ! -f /var/lib/apt/lists/.sampbridge-updated ] || [ -n "${CI:-}" ]; then
	apt-get update -q >/dev/null && touch /var/lib/apt/lists/.sampbridge-updated
fi
bash tests/vo_server/setup.sh
echo "[run_all] local CSC mimic ready after $((SECONDS - t0)) s"
bash tests/peers/install.sh
echo "[run_all] peers installed after $((SECONDS - t0)) s"
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test]"
echo "[run_all] python package installed after $((SECONDS - t0)) s"
ruff check .
set +e
python3 -m pytest -ra "$@"
rc=$?
set -e
echo "[run_all] tests finished after $((SECONDS - t0)) s (pytest exit $rc)"
[ $rc = 5 ] && { echo "[run_all] pytest collected no tests" >&2; exit 1; }
exit $rc
