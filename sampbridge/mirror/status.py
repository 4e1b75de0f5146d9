"""What ``sampbridge mirror status`` and the daemon's status say about the mirror."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .builder import JOURNAL
from .errors import MirrorUnusable
from .store import Mirror, check_pins, read_manifest, release_dir

__all__ = ["status", "open_mirror"]


def open_mirror(root: Path, release: str, services: Mapping[str, str]) -> Mirror:
    """Open the mirror of ``release`` under ``root``, pinned to ``services``.

    Raises
    ------
    MirrorUnusable
        When there is none, or it is of another release or service, or corrupt.
    """
    return Mirror.open(release_dir(root, release), release=release, services=services)


def _building(path: Path) -> dict[str, Any] | None:
    journal = path.with_name(path.name + ".building") / JOURNAL
    try:
        done = json.loads(journal.read_text()).get("done", {})
    except (OSError, ValueError):
        return None
    return {"slices": len(done), "rows": sum(int(d.get("rows", 0)) for d in done.values())}


def status(root: Path, release: str, services: Mapping[str, str], *, verify: bool = False,
           mirror: Mirror | None = None) -> dict[str, Any]:
    """Return the mirror's state for ``release`` as a dict (JSON-ready).

    Parameters
    ----------
    root : Path
        The folder of mirrors.
    release : str
        The configured release.
    services : mapping
        The configured ``tap`` and ``cone`` URLs.
    verify : bool
        Also compare the table's sha256 with the manifest's (reads the whole file).
    mirror : Mirror, optional
        An already open mirror of this release (not opened again).

    Returns
    -------
    dict
        ``state`` (``ready``, ``absent``, ``other``, ``old`` or ``corrupt``), ``usable``,
        ``reason`` (one sentence when not usable), ``path``, and from the manifest ``release``,
        ``services``, ``rows``, ``columns``, ``bytes``, ``built_at``; ``verified`` (True,
        False, or None when not checked); ``building`` (slices and rows of an unfinished build).
    """
    path = release_dir(root, release)
    out: dict[str, Any] = {"path": str(path), "state": "absent", "usable": False,
                           "reason": "", "verified": None, "building": _building(path)}
    try:
        manifest = read_manifest(path)
        out.update({k: manifest.get(k) for k in ("release", "services", "rows", "bytes",
                                                 "raw_bytes", "built_at", "build_seconds")})
        out["columns"] = [c["name"] for c in manifest["columns"]]
        check_pins(manifest, path, release, services)
        m = mirror or Mirror.open(path, release=release, services=services)
        try:
            if verify:
                out["verified"] = m.verify()
                if not out["verified"]:
                    raise MirrorUnusable(f"the mirror table {path} does not have the sha256 it "
                                         "was built with (changed or damaged); run `sampbridge "
                                         "mirror build` again", "corrupt")
        finally:
            if mirror is None:
                m.close()
        out.update(state="ready", usable=True)
    except MirrorUnusable as exc:
        out.update(state=exc.state, reason=str(exc))
    return out
