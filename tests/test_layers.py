"""The layer contracts of pyproject.toml hold, and each one bites on the leak it is there for.

The contracts (``[tool.importlinter]``, said in words in docs/design.md) are run here as well as
in tests/run_all.sh, so that a local pytest run catches a leak too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = "from importlinter.cli import lint_imports_command as c; c()"


def _lint(cwd: Path, contract: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` (one contract, by id, or all) on the package in ``cwd``."""
    only = ["--contract", contract] if contract else []
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--no-logo", *only],
                          cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)},
                          capture_output=True, text=True, timeout=120)


def test_the_layer_contracts_are_kept() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("csc/votable.py", "from ..model import RequestError", "csc-below"),
    ("csc/tap.py", "from .. import engine", "csc-below"),
    ("samp/hub.py", "from ..config import Config", "samp-below"),
    ("samp/hub.py", "from ..csc import names", "csc-samp-apart"),
    ("model.py", "from .csc.names import safe_name", "model-neutral"),
    ("engine.py", "from .samp import connection", "samp-joined-by-daemon"),
    ("activity.py", "from .errors import SampBridgeError", "activity-neutral"),
])
def test_a_leak_breaks_its_contract(tmp_path: Path, module: str, line: str,
                                    contract: str) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "sampbridge", tmp_path / "sampbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    kept = _lint(tmp_path, contract)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    with open(tmp_path / "sampbridge" / module, "a", encoding="utf-8") as f:
        f.write(f"\n{line}  # a leak\n")
    broken = _lint(tmp_path, contract)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "1 broken" in broken.stdout, broken.stdout


@pytest.mark.parametrize(("module", "line"), [
    ("daemon/pointat.py", "from ..samp import HubConnection"),
    ("doctor.py", "from .samp import HubConnection"),
    ("doctor/__init__.py", "from ..samp import HubConnection"),
])
def test_the_daemon_rooms_and_the_doctor_may_join_samp(tmp_path: Path, module: str,
                                                       line: str) -> None:
    """Every module of the daemon package, and the doctor (module or package), may import samp."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "sampbridge", tmp_path / "sampbridge",
                    ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "sampbridge" / module
    if module.startswith("doctor"):
        shutil.rmtree(tmp_path / "sampbridge" / "doctor", ignore_errors=True)
        (tmp_path / "sampbridge" / "doctor.py").unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("")
    with open(target, "a", encoding="utf-8") as f:
        f.write(f"\n{line}  # allowed\n")
    run = _lint(tmp_path, "samp-joined-by-daemon")
    assert run.returncode == 0, run.stdout + run.stderr
