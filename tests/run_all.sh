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
# The tests' Python: python3 itself where pip may install into it (a pyenv or other own
# Python), else (a stock Debian/Ubuntu Python, which refuses with PEP 668's
# "externally-managed-environment") a private virtual environment kept for the tests.
PY=python3
if python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))'
then
	apt-get install -y -q python3-venv >/dev/null
	[ -x /var/lib/sampbridge-tests/venv/bin/python ] || python3 -m venv /var/lib/sampbridge-tests/venv
	PY=/var/lib/sampbridge-tests/venv/bin/python
	echo "[run_all] python3 is externally managed (PEP 668): the tests use $PY"
fi
$PY -m pip install -q --disable-pip-version-check --root-user-action=ignore -e ".[test,scale]"
echo "[run_all] python package installed after $((SECONDS - t0)) s"
$PY -m ruff check .
$PY -m mypy sampbridge
# the layer contracts of pyproject.toml [tool.importlinter] (docs/design.md, "Layers"); import-linter
# has no "python -m" entry, so its script is run from the scripts folder of the tests' Python
"$($PY -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/lint-imports" --no-cache
# The README's install lines, proven in a fresh environment on the stock Debian Python (where
# "pip install ." meets PEP 668), apart from the editable install above. Kept equal to README.md's
# "Install and run" block by tests/test_install.py; "sampbridge run" becomes --version and
# check-config. systemd brings systemd-analyze, which tests/test_service.py needs.
readme_pipx='pipx install .'
readme_venv='python3 -m venv ~/.venvs/sampbridge && ~/.venvs/sampbridge/bin/pip install .'
apt-get install -y -q --no-install-recommends pipx systemd >/dev/null
prove_install() (
	set -euo pipefail
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	mkdir "$tmp/src" "$tmp/home"
	tar -c --exclude=./.git --exclude=./build --exclude=./dist --exclude='*.egg-info' \
		--exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache . | tar -x -C "$tmp/src"
	cd "$tmp/src"
	unset VIRTUAL_ENV PYTHONPATH PYTHONHOME PIP_USER
	export HOME=$tmp/home PIPX_HOME=$tmp/pipx PIPX_BIN_DIR=$tmp/bin
	export PATH=$PIPX_BIN_DIR:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	t=$SECONDS
	$readme_pipx >/dev/null
	echo "[run_all] README: '$readme_pipx' took $((SECONDS - t)) s"
	[ "$(command -v sampbridge)" = "$PIPX_BIN_DIR/sampbridge" ]
	"$PIPX_BIN_DIR/sampbridge" --version
	sampbridge check-config config.yaml
	sampbridge service install >/dev/null
	grep -q "^ExecStart=$PIPX_HOME/venvs/sampbridge/bin/sampbridge run\$" \
		"$HOME/.config/systemd/user/sampbridge.service"
	t=$SECONDS
	bash -c "$readme_venv" >/dev/null
	echo "[run_all] README: '$readme_venv' took $((SECONDS - t)) s"
	~/.venvs/sampbridge/bin/sampbridge --version
	~/.venvs/sampbridge/bin/sampbridge check-config config.yaml
)
set +e
prove_install     # a plain command: "||" or "if" here would switch off its set -e
rc=$?
set -e
[ $rc = 0 ] || { echo "[run_all] the README's install lines fail in a fresh environment" >&2; exit 1; }
$PY -c 'import sampbridge, sys; sys.exit(sampbridge.__file__ != sys.argv[1])' \
	"$PWD/sampbridge/__init__.py" || { echo "[run_all] the editable install moved" >&2; exit 1; }
echo "[run_all] README install lines proven after $((SECONDS - t0)) s"
set +e
$PY -m pytest -ra --durations=25 "$@"    # the slowest 25: where the time budget goes
rc=$?
set -e
echo "[run_all] tests finished after $((SECONDS - t0)) s (pytest exit $rc)"
[ $rc = 5 ] && { echo "[run_all] pytest collected no tests" >&2; exit 1; }
exit $rc
