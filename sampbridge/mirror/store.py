"""On disk: one folder per release, a FITS binary table and a manifest; opened memory-mapped.

``<root>/<release>/mirror.fits`` holds the rows sorted by declination (TOPCAT opens it as it
is); ``manifest.json`` says what it is (release, services, columns, rows, bytes, sha256, the
cone FIELDs per VERB).  The manifest is written last, inside a folder that is renamed into
place whole, so a folder with a manifest is a finished mirror.  Opening reads the manifest,
checks the file's size and FITS header against it, maps the file and builds a
:class:`scipy.spatial.cKDTree` on unit vectors (about 0.1 s for 408k rows, see
docs/mirror.md), so there is no index file to keep in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._astropy import quiet_astropy
from .errors import MirrorError, MirrorUnusable

__all__ = ["COMPUTED", "FORMAT_VERSION", "FITS_NAME", "MANIFEST_NAME", "Mirror", "default_root",
           "release_dir", "write_fits", "sha256_of", "private_dir", "unit_vectors",
           "install"]

FORMAT_VERSION = 1
#: cone columns computed for each answer, not stored: DaCHS's distance to the cone centre, deg
COMPUTED = ("_r",)
FITS_NAME = "mirror.fits"
MANIFEST_NAME = "manifest.json"


def default_root() -> Path:
    """Return ``$XDG_DATA_HOME/sampbridge/mirror`` (``~/.local/share/...`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return Path(base) / "sampbridge" / "mirror"


def release_dir(root: Path, release: str) -> Path:
    """Return the folder of ``release`` under ``root`` (its name made safe for a path)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in release).strip(".")
    return Path(root) / (safe or "release")


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 and return it; an existing one is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, read 1 MB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Return (n, 3) unit vectors of positions in degrees."""
    r, d = np.radians(np.asarray(ra, dtype=float)), np.radians(np.asarray(dec, dtype=float))
    cd = np.cos(d)
    return np.column_stack([cd * np.cos(r), cd * np.sin(r), np.sin(d)])


def _fits_column(name: str, values: np.ndarray, mask: np.ndarray | None) -> tuple[Any, dict]:
    """Return an astropy FITS column and how its nulls are stored (for the manifest)."""
    from astropy.io import fits

    kind = values.dtype.kind
    nulls = mask is not None and bool(mask.any())
    if kind == "b":
        arr = values.astype(np.uint8)
        if nulls:
            arr[mask] = 255
        return fits.Column(name=name, format="B", array=arr, null=255 if nulls else None), {
            "store": "bool", "null": 255 if nulls else None}
    if kind in "iu":
        arr = values.astype(values.dtype.newbyteorder("="))
        code = {1: "B", 2: "I", 4: "J", 8: "K"}[arr.dtype.itemsize]
        null = int(np.iinfo(arr.dtype).min) if nulls else None
        if nulls:
            arr = arr.copy()
            arr[mask] = null
        return fits.Column(name=name, format=code, array=arr, null=null), {
            "store": str(arr.dtype), "null": null}
    if kind == "f":
        arr = values.astype(values.dtype.newbyteorder("=")).copy()
        if nulls:
            arr[mask] = np.nan
        return fits.Column(name=name, format="E" if arr.dtype.itemsize == 4 else "D",
                           array=arr), {"store": str(arr.dtype), "null": "nan"}
    text = np.char.encode(np.asarray(values, dtype=str), "utf-8")
    if nulls:
        text[mask] = b""
    width = max(1, int(np.char.str_len(text).max()) if len(text) else 1)
    return fits.Column(name=name, format=f"{width}A", array=text), {"store": "str",
                                                                       "null": ""}


def write_fits(path: Path, columns: Mapping[str, tuple[np.ndarray, np.ndarray | None]]
               | Iterable[tuple[str, np.ndarray, np.ndarray | None]]) -> list[dict]:
    """Write ``columns`` (values, null mask) as a FITS binary table at ``path`` (mode 0600).

    ``columns`` is a mapping of name to (values, mask), or an iterable of (name, values, mask)
    that is consumed one column at a time: each is converted to its FITS form before the next
    is asked for, so a caller that loads columns lazily holds one raw column at a time.

    Returns
    -------
    list of dict
        Per column: ``name``, ``store`` (``bool``, a numpy integer or float type, ``str``)
        and ``null`` (the stored null: an integer, ``nan``, ``""`` or None).
    """
    from astropy.io import fits

    cols, how = [], []
    items = ((n, v, m) for n, (v, m) in columns.items()) if isinstance(columns, Mapping) \
        else columns
    for name, values, mask in items:
        col, info = _fits_column(name, values, mask)
        del values, mask
        cols.append(col)
        how.append({"name": name, **info})
    with quiet_astropy():
        hdu = fits.BinTableHDU.from_columns(cols)
        hdu.header["EXTNAME"] = "MASTER_SOURCE"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(fh)
            fh.flush()
            os.fsync(fh.fileno())
    return how


def install(built: Path, final: Path) -> None:
    """Put the finished folder ``built`` in the place of ``final`` (replacing an old mirror)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(built, final)
    shutil.rmtree(old, ignore_errors=True)


class Mirror:
    """An open mirror: the memory-mapped FITS table, its manifest and a KD-tree on positions.

    Use :meth:`open`; see :mod:`sampbridge.mirror.query` for cones and matches.
    """

    def __init__(self, path: Path, manifest: dict, hdul: Any) -> None:
        from scipy.spatial import cKDTree  # type: ignore[import-untyped]

        self.path = path
        self.manifest = manifest
        self._hdul = hdul
        self.data = hdul[1].data
        self.ra = np.asarray(self.data.field("ra"), dtype=float)
        self.dec = np.asarray(self.data.field("dec"), dtype=float)
        self.tree = cKDTree(unit_vectors(self.ra, self.dec), balanced_tree=False,
                            compact_nodes=False)
        self.stored = {c["name"]: c for c in manifest["columns"]}
        self._fields: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def release(self) -> str:
        """The CSC release the mirror holds."""
        return str(self.manifest["release"])

    @property
    def rows(self) -> int:
        """The number of rows."""
        return int(self.manifest["rows"])

    @property
    def columns(self) -> list[str]:
        """The mirrored column names, in table order."""
        return [c["name"] for c in self.manifest["columns"]]

    def fields(self, verb: int) -> list[dict] | None:
        """Return the cone service's FIELDs at ``verb``, or None when they are not all mirrored."""
        fields = self.manifest.get("verbs", {}).get(str(verb))
        if not fields or any(f["attrs"].get("name") not in self.stored
                             and f["attrs"].get("name") not in COMPUTED for f in fields):
            return None
        return list(fields)

    def column(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Return the values of column ``name`` at ``rows`` and their null mask (or None)."""
        info = self.stored[name]
        col = self._fields.get(name)
        if col is None:
            with self._lock:       # astropy converts a column at its first access: once only
                col = self._fields.get(name)
                if col is None:
                    col = self._fields[name] = self.data.field(name)
        raw = col[rows]
        null = info.get("null")
        if info["store"] == "bool":
            arr = np.asarray(raw, dtype=np.uint8)
            return arr == 1, (arr == 255) if null is not None else None
        if info["store"] == "str":
            return np.asarray(raw, dtype=str), None
        arr = np.asarray(raw, dtype=info["store"])
        if null == "nan":
            return arr, np.isnan(arr)
        return arr, (arr == null) if null is not None else None

    @classmethod
    def open(cls, path: Path, *, release: str | None = None,
             services: Mapping[str, str] | None = None) -> Mirror:
        """Open the mirror folder ``path``, checked against its manifest and the pins.

        Parameters
        ----------
        path : Path
            The release folder (see :func:`release_dir`).
        release : str, optional
            The configured release: another one is refused.
        services : mapping, optional
            The configured service URLs (``tap``, ``cone``): other ones are refused.

        Raises
        ------
        MirrorUnusable
            With ``state`` ``absent``, ``old``, ``other`` or ``corrupt`` and one sentence.
        """
        manifest = read_manifest(path)
        check_pins(manifest, path, release, services)
        fits_path = path / FITS_NAME
        try:
            size = fits_path.stat().st_size
        except OSError:
            raise MirrorUnusable(f"the mirror at {path} has lost its table {FITS_NAME}; run "
                                 "`sampbridge mirror build` again", "corrupt") from None
        if size != manifest["bytes"]:
            raise MirrorUnusable(f"the mirror table {fits_path} is {size:,} bytes, not the "
                                 f"{manifest['bytes']:,} it was built with (truncated or "
                                 "changed); run `sampbridge mirror build` again", "corrupt")
        from astropy.io import fits

        try:
            with quiet_astropy():
                hdul = fits.open(fits_path, memmap=True, mode="readonly")
                hdr = hdul[1].header
                if (hdr.get("NAXIS2") != manifest["rows"]
                        or hdr.get("TFIELDS") != len(manifest["columns"])):
                    hdul.close()
                    raise ValueError("header does not match the manifest")
                return cls(path, manifest, hdul)
        except (OSError, ValueError, IndexError, KeyError, TypeError) as exc:
            raise MirrorUnusable(f"the mirror table {fits_path} cannot be read ({exc}); run "
                                 "`sampbridge mirror build` again", "corrupt") from None

    def verify(self) -> bool:
        """Return True when the table's sha256 is the one recorded at build time."""
        return sha256_of(self.path / FITS_NAME) == self.manifest["sha256"]

    def close(self) -> None:
        """Unmap the table."""
        self._hdul.close()


def read_manifest(path: Path) -> dict:
    """Return the manifest of the mirror folder ``path``.

    Raises
    ------
    MirrorUnusable
        ``absent`` (no mirror), ``old`` (another format version) or ``corrupt``.
    """
    mpath = path / MANIFEST_NAME
    if not mpath.exists():
        raise MirrorUnusable(f"there is no mirror at {path}; build one with `sampbridge mirror "
                             "build`", "absent")
    try:
        manifest = json.loads(mpath.read_text())
        version = manifest["format"]
        for key in ("release", "services", "columns", "rows", "bytes", "sha256"):
            manifest[key]
    except (OSError, ValueError, KeyError, TypeError):
        raise MirrorUnusable(f"the mirror manifest {mpath} cannot be read; run `sampbridge "
                             "mirror build` again", "corrupt") from None
    if version != FORMAT_VERSION:
        raise MirrorUnusable(f"the mirror at {path} has format {version}, this sampbridge "
                             f"reads format {FORMAT_VERSION}; run `sampbridge mirror build` "
                             "again", "old")
    return dict(manifest)


def check_pins(manifest: dict, path: Path, release: str | None,
               services: Mapping[str, str] | None) -> None:
    """Refuse a mirror of another release or service than the configured ones."""
    if release is not None and manifest["release"] != release:
        raise MirrorUnusable(f"the mirror at {path} holds release {manifest['release']}, not "
                             f"the configured {release}; build one for {release} with "
                             "`sampbridge mirror build`", "other")
    for kind, url in (services or {}).items():
        built = manifest["services"].get(kind)
        if built is not None and built.rstrip("/") != url.rstrip("/"):
            raise MirrorUnusable(f"the mirror at {path} was built from the {kind} service "
                                 f"{built}, not the configured {url}; build it again with "
                                 "`sampbridge mirror build`", "other")


def remove(path: Path) -> bool:
    """Remove the mirror folder ``path`` and an unfinished build beside it; True if any."""
    found = False
    for p in (path, path.with_name(path.name + ".building")):
        if p.exists():
            shutil.rmtree(p)
            found = True
    return found


def fail_disk(exc: OSError, where: Path) -> MirrorError:
    """Return the one sentence for a write that failed (a full disk above all)."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return MirrorError(f"the disk is full at {where}: free some space and run `sampbridge "
                           "mirror build` again (it resumes from the slices already saved)")
    return MirrorError(f"cannot write the mirror at {where} ({exc.strerror or exc}); check the "
                       "folder and run `sampbridge mirror build` again")
