from __future__ import annotations

import re
from pathlib import Path

import pytest

from sampbridge.cli import main
from sampbridge.config import SETTINGS, ConfigError, default_yaml, defaults, load_config

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_config_yaml_is_the_defaults():
    assert (ROOT / "config.yaml").read_text() == default_yaml()
    assert load_config(ROOT / "config.yaml").values == defaults().values


def test_every_key_is_documented_with_its_help():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for s in SETTINGS:
        assert f"`{s.key}`" in doc, f"{s.key} is not in docs/configuration.md"
        assert s.help.split(" (")[0][:40] in doc, f"help of {s.key} is not in the docs"


def test_partial_file_keeps_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "cone:\n  radius: 0.1\nhub:\n  mode: connect\n"))
    assert cfg["cone.radius"] == 0.1
    assert cfg["hub.mode"] == "connect"
    assert cfg["cone.verb"] == defaults()["cone.verb"]


def test_int_is_accepted_for_a_float_key(tmp_path):
    assert load_config(write(tmp_path, "cone:\n  radius: 1\n"))["cone.radius"] == 1.0


@pytest.mark.parametrize("text, line, key, words", [
    ("cone:\n  radius: 0.1\n  radious: 2\n", 3, "cone.radious", "unknown key"),
    ("colour: red\n", 1, "colour", "unknown key"),
    ("cone:\n  verb: 7\n", 2, "cone.verb", "one of 1, 2, 3"),
    ("cone:\n  radius: big\n", 2, "cone.radius", "must be a number"),
    ("images:\n  enabled: 3\n", 2, "images.enabled", "true or false"),
    ("hub:\n  mode: maybe\n", 2, "hub.mode", "auto, connect, start"),
    ("services:\n  tap: ftp://x\n", 2, "services.tap", "http"),
    ("send_tables_to: topcat\n", 1, "send_tables_to", "a list"),
    ("cone: 3\n", 1, "cone", "mapping"),
    ("cone:\n  radius: 0.1\ncone:\n  verb: 1\n", None, None, ""),
])
def test_bad_files_name_file_line_and_key(tmp_path, text, line, key, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    err = ei.value
    assert err.path == str(p)
    if line is not None:
        assert err.line == line
        assert err.key == key
        assert str(err).startswith(f"{p}:{line}: {key}: ")
        assert words in str(err)


def test_yaml_syntax_error_has_line(tmp_path):
    p = write(tmp_path, "cone:\n  radius: [0.1\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+: not valid YAML"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml")


def test_check_config_command(tmp_path, capsys):
    assert main(["check-config", str(ROOT / "config.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = write(tmp_path, "cone:\n  verbb: 2\n")
    assert main(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"sampbridge: error: {re.escape(str(bad))}:2: cone.verbb: "
                                      "unknown key", err[0])


def test_check_config_lists_every_error_of_the_file(tmp_path):
    """Three mistakes take one run: each on its own line, file:line: key: what, exit 2."""
    import subprocess
    import sys

    c = tmp_path / "c.yaml"
    c.write_text("cone:\n  radius: -1\n  verb: 7\nhub:\n  mode: sometimes\ntypo: 1\n")
    r = subprocess.run([sys.executable, "-m", "sampbridge", "check-config", str(c)],
                       capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert lines == [
        f"sampbridge: error: {c}:2: cone.radius: must be between 1e-06 and 10.0 (got -1.0)",
        f"sampbridge: error: {c}:3: cone.verb: must be one of 1, 2, 3 (got 7)",
        f"sampbridge: error: {c}:5: hub.mode: must be one of auto, connect, start "
        "(got 'sometimes')",
        f"sampbridge: error: {c}:6: typo: unknown key",
    ], lines
