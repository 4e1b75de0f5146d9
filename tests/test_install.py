"""The README's install lines are the ones that tests/run_all.sh proves in a fresh environment.

run_all.sh installs with pipx and with a plain venv on Debian's own Python (where ``pip install
.`` meets PEP 668); these tests keep README.md and that proof from drifting apart, without a
second install inside pytest.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN_ALL = ROOT / "tests" / "run_all.sh"


def _section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def _blocks(section: str) -> list[list[str]]:
    return [b.strip().splitlines() for b in re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)]


def _assigned(name: str) -> str:
    m = re.search(rf"^{name}=(.*)$", RUN_ALL.read_text(), re.M)
    assert m, f"tests/run_all.sh sets no {name}"
    (value,) = shlex.split(m.group(1))
    return value


def test_readme_first_command_is_the_pipx_line_run_all_proves() -> None:
    blocks = _blocks(_section(README.read_text(), "Install and run"))
    assert blocks[0] == [f"{_assigned('readme_pipx')} && sampbridge run"]
    assert blocks[0] == ["pipx install . && sampbridge run"]


def test_readme_venv_line_is_the_one_run_all_proves() -> None:
    blocks = _blocks(_section(README.read_text(), "Install and run"))
    venv = _assigned("readme_venv")
    assert blocks[1] == [f"{venv} && ~/.venvs/sampbridge/bin/sampbridge run"]
    assert "python3 -m pip install" not in "\n".join(sum(blocks[:2], []))


def test_run_all_runs_both_lines_fresh_and_before_pytest() -> None:
    script = RUN_ALL.read_text()
    proof = script.index("prove_install() (")
    body = script[proof:script.index("\n)\n", proof)]
    # both README lines, run as written, in a throwaway home and pipx home on /usr/bin's python3
    assert "\n\t$readme_pipx " in body
    assert '\n\tbash -c "$readme_venv" ' in body
    for setting in ("tmp=$(mktemp -d)", "export HOME=$tmp/home PIPX_HOME=$tmp/pipx "
                    "PIPX_BIN_DIR=$tmp/bin", "export PATH=$PIPX_BIN_DIR:/usr/local/sbin"):
        assert setting in body
    for check in ('"$PIPX_BIN_DIR/sampbridge" --version', "sampbridge check-config config.yaml",
                  "~/.venvs/sampbridge/bin/sampbridge --version"):
        assert check in body
    assert "apt-get install -y -q --no-install-recommends pipx systemd" in script
    # a failure fails the run: the function is called as a plain command (set -e stays on)
    assert "\nprove_install     #" in script
    assert '[ $rc = 0 ] || { echo "[run_all] the README\'s install lines fail' in script
    assert script.index("\nprove_install ") < script.index("$PY -m pytest")
    # the editable install of the tests is left as it was, and checked
    assert script.index('pip install -q --disable-pip-version-check --root-user-action=ignore '
                        '-e ".[test,scale]"') < proof
    assert '"$PWD/sampbridge/__init__.py" || { echo "[run_all] the editable install moved"' \
        in script
