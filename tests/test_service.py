"""``sampbridge service install | uninstall | status``: run at login, in the user's home only.

The CLI runs as a subprocess with ``HOME`` set to a temporary folder and no session bus, so no
test can reach (or enable anything in) a real systemd user manager. Both platforms' files are
written on this Linux box through the hidden ``--platform`` option.
"""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sampbridge import service

from conftest import need

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.yaml"
UNIT = Path(".config/systemd/user/sampbridge.service")
AGENT = Path("Library/LaunchAgents/org.sampbridge.daemon.plist")
LOG = Path("Library/Logs/sampbridge.log")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS",
                        "SUDO_USER")}
    env.update(HOME=str(home), **extra)
    return env


def svc(home: Path, *args: str | Path, prog: list[str] | None = None,
        **env: str) -> subprocess.CompletedProcess:
    """Run ``sampbridge service ARGS`` as its own process, with ``HOME=home``."""
    prog = prog or [sys.executable, "-m", "sampbridge"]
    return subprocess.run([*prog, "service", *map(str, args)], capture_output=True, text=True,
                          env=_env(home, **env), timeout=60, check=False)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in sorted(root.rglob("*"))}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir(mode=0o755)
    return h


def _verify_unit(unit: Path, home: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze is missing", "sudo apt-get install -y systemd")
    run_dir = home.parent / "run"
    run_dir.mkdir(mode=0o700, exist_ok=True)
    # --user needs a runtime folder; a private one keeps the test off the real user manager
    return subprocess.run([exe, "--user", "verify", str(unit)], capture_output=True, text=True,
                          env=_env(home, XDG_RUNTIME_DIR=str(run_dir)), timeout=60, check=False)


def test_linux_unit_passes_systemd_analyze_verify(home: Path) -> None:
    r = svc(home, "install", "--platform", "linux", "--config", CONFIG)
    assert r.returncode == 0, r.stderr
    unit = home / UNIT
    text = unit.read_text()
    assert f"ExecStart={sys.executable} -m sampbridge run --config {CONFIG}\n" in text
    for line in ("Restart=on-failure", "RestartPreventExitStatus=2", "WantedBy=default.target"):
        assert f"\n{line}\n" in text
    v = _verify_unit(unit, home)
    assert (v.returncode, v.stdout + v.stderr) == (0, "")
    # and the verifier is not a rubber stamp: a broken copy of the same unit fails it
    broken = home.parent / "sampbridge.service"
    broken.write_text(text.replace(f"ExecStart={sys.executable}", "ExecStart=/no/such/python"))
    assert _verify_unit(broken, home).returncode != 0


def test_odd_paths_are_quoted_for_systemd_and_read_back(home: Path, tmp_path: Path) -> None:
    odd = tmp_path / 'my "cfg" 100% $HOME'
    odd.mkdir()
    cfg = odd / "sampbridge config.yaml"
    shutil.copy(CONFIG, cfg)
    r = svc(home, "install", "--platform", "linux", "--config", cfg)
    assert r.returncode == 0, r.stderr
    v = _verify_unit(home / UNIT, home)
    assert (v.returncode, v.stdout + v.stderr) == (0, "")
    t = service.target("linux", home)
    assert service.installed_command(t) == [sys.executable, "-m", "sampbridge", "run",
                                            "--config", str(cfg)]
    st = svc(home, "status", "--platform", "linux")
    runs = shlex.join([sys.executable, "-m", "sampbridge", "run", "--config", str(cfg)])
    assert f"runs: {runs}" in st.stdout


def test_macos_agent_is_a_plist_with_the_right_keys(home: Path) -> None:
    r = svc(home, "install", "--platform", "macos", "--config", CONFIG)
    assert r.returncode == 0, r.stderr
    with open(home / AGENT, "rb") as fh:
        agent = plistlib.load(fh)
    assert agent == {
        "Label": "org.sampbridge.daemon",
        "ProgramArguments": [sys.executable, "-m", "sampbridge", "run", "--config", str(CONFIG)],
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 10,
        "StandardOutPath": str(home / LOG),
        "StandardErrorPath": str(home / LOG),
    }
    assert "launchctl bootstrap gui/$(id -u) " in r.stdout
    # everything it made is private; the home it found keeps its mode
    assert _files(home) == {"Library": 0o700, "Library/LaunchAgents": 0o700,
                            str(AGENT): 0o600, "Library/Logs": 0o700, str(LOG): 0o600}
    assert _mode(home) == 0o755


@pytest.mark.parametrize("platform, path", [("linux", UNIT), ("macos", AGENT)])
def test_install_status_uninstall_round_trip(home: Path, platform: str, path: Path) -> None:
    before = svc(home, "status", "--platform", platform)
    assert before.returncode == 1
    assert before.stdout.startswith("not installed: no ")
    assert "sampbridge service install" in before.stdout

    first = svc(home, "install", "--platform", platform)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"wrote {home / path} ")
    assert first.stderr == ""
    f = home / path
    assert _mode(f) == 0o600
    written, stamp = f.read_bytes(), f.stat().st_mtime_ns

    st = svc(home, "status", "--platform", platform)
    assert st.returncode == 0
    assert st.stdout.splitlines()[:2] == [
        f"installed: {f} ({'systemd user unit' if platform == 'linux' else 'launchd agent'})",
        f"runs: {shlex.join([sys.executable, '-m', 'sampbridge', 'run'])}"]
    if platform == "linux":
        # no session bus in the test: it says so instead of guessing
        assert "whether it runs now is unknown (systemctl --user does not answer here)" \
            in st.stdout

    # re-install: same file, untouched, and it says so
    again = svc(home, "install", "--platform", platform)
    assert again.returncode == 0
    assert again.stdout.startswith(f"unchanged: {f} ")
    assert (f.read_bytes(), f.stat().st_mtime_ns) == (written, stamp)
    files = _files(home)

    # a changed command replaces the file, and says how to restart what runs
    changed = svc(home, "install", "--platform", platform, "--config", CONFIG)
    assert changed.stdout.startswith(f"updated {f} ")
    assert "restart" in changed.stdout
    assert str(CONFIG) in service.installed_command(service.target(platform, home))
    assert _files(home) == files        # no stray temporary file left behind

    gone = svc(home, "uninstall", "--platform", platform)
    assert gone.returncode == 0
    assert gone.stdout.splitlines()[0].startswith(f"removed {f} ")
    stop = "launchctl bootout gui/$(id -u)/org.sampbridge.daemon" if platform == "macos" \
        else "systemctl --user stop sampbridge.service"
    assert stop in gone.stdout
    assert not f.exists()
    assert svc(home, "status", "--platform", platform).returncode == 1
    twice = svc(home, "uninstall", "--platform", platform)
    kind = "systemd user unit" if platform == "linux" else "launchd agent"
    assert (twice.returncode, twice.stdout) == (0, f"nothing to remove: no {kind} at {f}\n")


def test_linux_install_prints_the_enable_line_and_never_runs_it(home: Path) -> None:
    r = svc(home, "install", "--platform", "linux")
    lines = r.stdout.splitlines()
    assert "    systemctl --user enable --now sampbridge.service" in lines
    assert "its log: journalctl --user -u sampbridge.service" in lines
    assert not (home / UNIT.parent / "default.target.wants").exists()


def test_enable_without_a_user_manager_says_what_to_run(home: Path) -> None:
    r = svc(home, "install", "--platform", "linux", "--enable")
    assert r.returncode == 1
    assert "systemctl --user does not answer here (no systemd user session), so nothing was " \
           "started" in r.stdout
    assert r.stdout.splitlines()[-1] == "    systemctl --user enable --now sampbridge.service"
    assert (home / UNIT).is_file()


def test_uninstall_removes_the_enable_link_it_points_at(home: Path) -> None:
    svc(home, "install", "--platform", "linux")
    wants = home / UNIT.parent / "default.target.wants"
    wants.mkdir()
    (wants / "sampbridge.service").symlink_to(home / UNIT)   # what systemctl enable makes
    (wants / "other.service").symlink_to(home / "other.service")
    r = svc(home, "uninstall", "--platform", "linux")
    assert r.returncode == 0
    assert sorted(p.name for p in wants.iterdir()) == ["other.service"]


def test_the_sampbridge_script_runs_itself_and_status_notices_it_gone(home: Path,
                                                                       tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "sampbridge"      # what pip writes for [project.scripts]
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom sampbridge.cli import main\n"
                      "sys.exit(main())\n")
    script.chmod(0o755)
    r = svc(home, "install", "--platform", "linux", prog=[str(script)])
    assert r.returncode == 0, r.stderr
    assert f"\nExecStart={script.resolve()} run\n" in (home / UNIT).read_text()
    script.unlink()                     # pipx uninstall, say
    st = svc(home, "status", "--platform", "linux")
    assert f"warning: {script.resolve()} is no longer there, so it cannot start; run " \
           "'sampbridge service install' again" in st.stdout


def test_a_bad_config_is_one_sentence_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cone:\n  radius: -1\n")
    r = svc(home, "install", "--platform", "linux", "--config", bad)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("sampbridge: error: ")
    assert "Traceback" not in r.stderr
    missing = svc(home, "install", "--platform", "macos", "--config", tmp_path / "none.yaml")
    assert missing.returncode == 2
    assert len(missing.stderr.splitlines()) == 1
    assert _files(home) == {}


def test_a_file_where_the_folder_goes_is_one_sentence(home: Path) -> None:
    (home / ".config").write_text("not a folder")
    r = svc(home, "install", "--platform", "linux")
    assert r.returncode == 2
    assert r.stderr == (f"sampbridge: error: {home / '.config'} is not a folder; move it away "
                        "and install again\n")
    assert (home / ".config").read_text() == "not a folder"
    assert svc(home, "status", "--platform", "linux").returncode == 1


def test_under_sudo_it_warns_that_this_is_roots_unit(home: Path) -> None:
    r = svc(home, "install", "--platform", "linux", SUDO_USER="alice")
    assert r.returncode == 0
    warned = r.stdout.startswith(f"warning: run through sudo, so this is {home / UNIT}, root's")
    assert warned == (os.geteuid() == 0)


def test_existing_folders_keep_their_mode(home: Path) -> None:
    cfg = home / ".config"
    cfg.mkdir(mode=0o755)
    cfg.chmod(0o755)
    svc(home, "install", "--platform", "linux")
    assert _mode(cfg) == 0o755
    assert _mode(cfg / "systemd") == 0o700
    assert _mode(cfg / "systemd" / "user") == 0o700


def test_xdg_config_home_is_where_systemd_looks(home: Path, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    r = svc(home, "install", "--platform", "linux", XDG_CONFIG_HOME=str(xdg))
    assert r.returncode == 0
    assert (xdg / "systemd" / "user" / "sampbridge.service").is_file()
    assert not (home / ".config").exists()


def test_the_names_of_sampbridge_service_stay_where_they_were(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Split into a systemd and a launchd room, ``sampbridge.service`` still has every name."""
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert (service.UNIT_NAME, service.AGENT_LABEL) == ("sampbridge.service",
                                                        "org.sampbridge.daemon")
    assert callable(service.run) and issubclass(service.ServiceError, Exception)
    argv = service.command(None, argv0="/no/such/sampbridge")
    assert "ExecStart=" in service.systemd_unit(argv)
    assert plistlib.loads(service.launchd_plist(argv, Path("/l")))["ProgramArguments"] == argv
    assert service.target("linux", Path("/h")).path == \
        Path("/h/.config/systemd/user/sampbridge.service")
