"""Input tables: fetch them safely, read them, and find their positions.  No SAMP here."""

from __future__ import annotations

import io
import ipaddress
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from astropy.table import Table

from ._astropy import quiet_astropy
from .csc import http
from .csc.errors import CSCError, ServiceTimeout
from .csc.names import safe_name
from .model import RequestError
from .safefile import FileMissing, FileRefused, read_regular

log = logging.getLogger(__name__)

__all__ = ["TableError", "fetch_table", "read_table", "find_position_columns", "positions",
           "Positions", "RA_NAMES", "DEC_NAMES", "is_loopback", "url_to_path"]

#: Column names tried, in order and case-insensitively, when no UCD marks the position.
RA_NAMES = ("ra", "ra_icrs", "raj2000", "_raj2000", "ra_j2000", "ra_deg", "radeg", "ra_d",
            "alpha", "alpha_j2000", "ra2000", "ra_csc", "ra_obj", "objra")
DEC_NAMES = ("dec", "de", "dec_icrs", "de_icrs", "dej2000", "_dej2000", "decj2000", "dec_j2000",
             "dec_deg", "dedeg", "dec_d", "delta", "delta_j2000", "dec2000", "dec_csc",
             "dec_obj", "objdec")
_RA_UCDS = ("pos.eq.ra;meta.main", "pos.eq.ra", "pos_eq_ra_main", "pos_eq_ra")
_DEC_UCDS = ("pos.eq.dec;meta.main", "pos.eq.dec", "pos_eq_dec_main", "pos_eq_dec")
_FORMATS = {".vot": "votable", ".xml": "votable", ".votable": "votable", ".fits": "fits",
            ".fit": "fits", ".fts": "fits", ".csv": "ascii.csv"}


class TableError(RequestError):
    """An input table that cannot be used; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` is this machine: ``localhost`` or a loopback address (no DNS)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_to_path(url: str) -> Path | None:
    """Return the local path of a ``file:`` URL in any peer spelling, else ``None``.

    Accepts ``file:/x``, ``file:///x``, ``file://localhost/x`` and ``file://localhost//x``.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost", "127.0.0.1"):
        raise TableError(f"the file URL {url} names another host ({parts.netloc}); "
                         "only local files can be read")
    path = unquote(parts.path)
    while path.startswith("//"):
        path = path[1:]
    return Path(path)


def fetch_table(url: str, dest_dir: Path, session, *, max_bytes: int,
                allow_remote: bool = False, deadline: float | None = None,
                cancel: threading.Event | None = None) -> Path:
    """Copy the table at ``url`` into ``dest_dir`` (file: or loopback http) and return its path.

    Parameters
    ----------
    url : str
        A ``file:`` URL, or an http(s) URL on this machine (anywhere with ``allow_remote``).
    dest_dir : Path
        Where the private copy goes.
    session : requests.Session
        The session http(s) downloads use (with its connect and read timeouts).
    max_bytes : int
        Size cap of the table.
    allow_remote : bool
        Allow http(s) hosts other than this machine.
    deadline : float, optional
        Most seconds an http(s) download may take in all, however slowly its server sends.
    cancel : threading.Event, optional
        When set, a running download is abandoned (checked as each piece arrives).

    Raises
    ------
    TableError
        For a refused scheme or host, a missing file, a table over ``max_bytes``, a download
        that did not finish within ``deadline``, or one abandoned by ``cancel``.
    """
    if not isinstance(url, str) or not url.strip():
        raise TableError("the message has no table 'url'")
    suffix = Path(urlsplit(url).path).suffix.lower()
    suffix = suffix if suffix in _FORMATS else ".vot"
    dest = dest_dir / f"in_{safe_name(Path(urlsplit(url).path).stem)[:40]}_" \
                      f"{uuid.uuid4().hex[:8]}{suffix}"
    local = url_to_path(url)
    if local is not None:
        try:
            size = local.stat().st_size
        except OSError as exc:
            raise TableError(f"cannot read the table file {local}: {exc.strerror}") from None
        if not local.is_file():
            raise TableError(f"{local} is not a file")
        if size > max_bytes:
            raise TableError(f"the table is {size:,} bytes, over the cap of {max_bytes:,} bytes "
                             "(tables.max_bytes)")
        shutil.copyfile(local, dest)
        os.chmod(dest, 0o600)
        return dest
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise TableError(f"cannot fetch a table by '{parts.scheme or url}': only file:, "
                         "and http(s) on this machine, are allowed")
    if not allow_remote and not is_loopback(parts.hostname or ""):
        raise TableError(f"refusing to fetch a table from {parts.hostname}: only this machine "
                         "(127.0.0.1, localhost) is allowed unless tables.allow_remote is true")
    give_up_at = None if deadline is None else time.monotonic() + deadline
    # a peer's built-in HTTP server (STILTS, TOPCAT) once answered 200 with an empty body
    # under load; no table is empty, so an empty body is fetched again, a few times
    for attempt, pause in enumerate((0.2, 0.5, None)):
        left = None if give_up_at is None else give_up_at - time.monotonic()
        try:
            if left is not None and left <= 0:
                raise ServiceTimeout(f"table download: the download did not finish within "
                                     f"{deadline:g} s", url=url)
            size = http.download(session, url, dest, what="table download",
                                 max_bytes=max_bytes, deadline=left,
                                 on_chunk=_abandon_if(cancel))
        except CSCError as exc:
            if exc.status == 404:
                raise TableError(f"the table URL {url} does not exist (HTTP 404)") from None
            if isinstance(exc, ServiceTimeout) and give_up_at is not None \
                    and time.monotonic() >= give_up_at:
                raise TableError(f"cannot fetch the table: the download from {url} did not "
                                 f"finish within {deadline:g} s (tables.fetch_timeout)") from None
            raise TableError(f"cannot fetch the table: {exc}") from None
        if size > 0:
            return dest
        dest.unlink(missing_ok=True)
        if pause is None:
            break
        log.info("the table at %s came empty (attempt %d); fetching it again", url,
                 attempt + 1)
        time.sleep(pause)
    raise TableError(f"the table URL {url} gave an empty body, 3 times")


def _abandon_if(cancel: threading.Event | None) -> Callable[[bytes], None] | None:
    """Return a download's ``on_chunk`` that stops it once ``cancel`` is set."""
    if cancel is None:
        return None

    def check(_chunk: bytes) -> None:
        if cancel.is_set():
            raise TableError("the table download was abandoned because sampbridge is stopping")

    return check


#: Size cap of a table file when the caller gives none (the default of ``tables.max_bytes``).
DEFAULT_TABLE_MAX_BYTES = 200_000_000
#: What each reader expects, said when a table cannot be parsed (its content is never quoted).
_UNREADABLE = {
    "votable": "it is not well-formed VOTable XML",
    "fits": "it holds no FITS table that can be read",
    "ascii.csv": "its lines are not a header and rows of comma-separated values with the same "
                 "number of columns",
}


def read_table(path: Path, max_rows: int, *, max_bytes: int | None = None,
               root: Path | None = None) -> Table:
    """Read a VOTable, FITS or CSV table; refuse empty, over-long, over-big or special files.

    The file is read through :func:`sampbridge.safefile.read_regular`: a regular file only (no
    symbolic link, FIFO or device), within ``max_bytes``.  No error quotes the file's content.

    Parameters
    ----------
    path : Path
        The table file.
    max_rows : int
        Most rows accepted (``tables.max_rows``).
    max_bytes : int, optional
        Size cap (``tables.max_bytes``); default :data:`DEFAULT_TABLE_MAX_BYTES`.
    root : Path, optional
        A folder the file must lie in, reached without symbolic links or ``..``.

    Raises
    ------
    TableError
        One sentence on what is wrong and what to do.
    """
    cap = DEFAULT_TABLE_MAX_BYTES if max_bytes is None else max_bytes
    try:
        data = read_regular(path, cap, root, cap_name="tables.max_bytes")
    except FileMissing:
        raise TableError(f"cannot read the table file {path.name}: it does not exist") from None
    except FileRefused as exc:
        raise TableError(str(exc)) from None
    fmt = _FORMATS.get(path.suffix.lower())
    head = data[:512]
    if head.startswith(b"SIMPLE  ="):
        fmt = "fits"
    elif b"<VOTABLE" in head or head.lstrip().startswith(b"<?xml"):
        fmt = "votable"
    if fmt not in _UNREADABLE:
        raise TableError(f"{path.name} is neither VOTable, FITS nor CSV")
    try:
        with quiet_astropy():
            table = _parse_table(data, fmt)
    except Exception:  # any reader failure means: not a table we can use
        # the reader's own message may quote the file (a first line, a tag): never pass it on
        raise TableError(f"this is not a readable table ({fmt}): {_UNREADABLE[fmt]}") from None
    if len(table) == 0:
        raise TableError("the table is empty: there are no rows to match")
    if len(table) > max_rows:
        raise TableError(f"the table has {len(table):,} rows, over the limit of {max_rows:,} "
                         "(tables.max_rows)")
    return table


def _parse_table(data: bytes, fmt: str) -> Table:
    if fmt == "fits":
        from astropy.io import fits

        with fits.open(io.BytesIO(data)) as hdul:
            has_table = len(hdul) > 1 and isinstance(hdul[1], (fits.BinTableHDU, fits.TableHDU))
        return Table.read(io.BytesIO(data), format="fits", hdu=1 if has_table else None)
    return Table.read(io.BytesIO(data), format=fmt)


def _ucd(col) -> str:
    return str(col.meta.get("ucd", "") or getattr(col, "ucd", "") or "").lower()


def find_position_columns(table: Table) -> tuple[str, str]:
    """Return the names of the RA and Dec columns: by UCD first, then by usual names.

    Raises
    ------
    TableError
        Naming the UCDs and column names that were looked for.
    """
    def by_ucd(ucds: tuple[str, ...]) -> str | None:
        for want in ucds:
            for name in table.colnames:
                u = _ucd(table[name])
                if u == want or (";" not in want and u.split(";")[0] == want):
                    return name
        return None

    def by_name(names: tuple[str, ...]) -> str | None:
        lower = {n.lower(): n for n in table.colnames}
        for want in names:
            if want in lower:
                return lower[want]
        return None

    ra = by_ucd(_RA_UCDS) or by_name(RA_NAMES)
    dec = by_ucd(_DEC_UCDS) or by_name(DEC_NAMES)
    if ra is None or dec is None:
        raise TableError(
            "no position columns found: looked for UCDs pos.eq.ra;meta.main / pos.eq.dec;meta.main"
            " (then pos.eq.ra / pos.eq.dec) and for columns named "
            f"{', '.join(RA_NAMES[:6])}... / {', '.join(DEC_NAMES[:6])}...; the table has "
            f"{', '.join(table.colnames[:12])}{'...' if len(table.colnames) > 12 else ''}")
    return ra, dec


@dataclass
class Positions:
    """Positions of a table's rows in degrees, with a mask of the usable ones."""

    ra: np.ndarray
    dec: np.ndarray
    valid: np.ndarray
    ra_col: str
    dec_col: str


def _to_degrees(col, is_ra: bool) -> np.ndarray:
    from astropy.coordinates import Angle

    data = col.filled(np.nan) if hasattr(col, "filled") and col.dtype.kind in "fiu" else col
    if getattr(col, "dtype", None) is not None and col.dtype.kind in "fiu":
        values = np.asarray(data, dtype=float)
        unit = str(col.unit or "").strip().lower()
        if unit in ("rad", "radian", "radians"):
            values = np.degrees(values)
        elif unit in ("h", "hour", "hourangle", "hr") and is_ra:
            values = values * 15.0
        return values
    out = np.full(len(col), np.nan)
    for i, v in enumerate(col):
        if v is None or np.ma.is_masked(v):
            continue
        s = v.decode() if isinstance(v, bytes) else str(v)
        s = s.strip()
        if not s:
            continue
        try:
            out[i] = float(s)
            continue
        except ValueError:
            pass
        try:
            out[i] = Angle(s, unit="hourangle" if is_ra else "deg").deg
        except Exception:  # an unreadable cell is just an unusable position
            pass
    return out


def positions(table: Table, ra_col: str | None = None, dec_col: str | None = None) -> Positions:
    """Return the rows' positions in degrees; NaN, |dec| > 90 or bad text are marked invalid."""
    if ra_col is None or dec_col is None:
        ra_col, dec_col = find_position_columns(table)
    ra = _to_degrees(table[ra_col], True)
    dec = _to_degrees(table[dec_col], False)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90) & (np.abs(ra) <= 360)
    ra = np.where(valid, np.mod(ra, 360.0), np.nan)
    return Positions(ra, dec, valid, ra_col, dec_col)


@dataclass
class KnownTable:
    """A table sampbridge has seen (received or produced), kept for highlight and select."""

    table_id: str
    url: str
    path: Path
    name: str
    _table: Table | None = None
    _positions: Positions | None = None

    def table(self, max_rows: int) -> Table:
        """Return the table, read on first use."""
        if self._table is None:
            self._table = read_table(self.path, max_rows)
        return self._table

    def positions(self, max_rows: int) -> Positions:
        """Return the rows' positions, computed on first use."""
        if self._positions is None:
            self._positions = positions(self.table(max_rows))
        return self._positions


class KnownTables:
    """A bounded LRU of known tables, looked up by table-id, else by URL."""

    def __init__(self, size: int = 32) -> None:
        from collections import OrderedDict
        from threading import Lock

        self.size = size
        self._by_id: OrderedDict[str, KnownTable] = OrderedDict()
        self._by_url: dict[str, str] = {}
        self._lock = Lock()

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, entry: KnownTable) -> None:
        """Remember a table, evicting the least recently used beyond ``size``."""
        with self._lock:
            self._by_id[entry.table_id] = entry
            self._by_id.move_to_end(entry.table_id)
            self._by_url[entry.url] = entry.table_id
            while len(self._by_id) > self.size:
                _, old = self._by_id.popitem(last=False)
                if self._by_url.get(old.url) == old.table_id:
                    del self._by_url[old.url]

    def get(self, table_id: str | None, url: str | None) -> KnownTable | None:
        """Find a table by id, else by URL (and mark it recently used)."""
        with self._lock:
            key = table_id if table_id in self._by_id else self._by_url.get(url or "")
            if key is None or key not in self._by_id:
                return None
            self._by_id.move_to_end(key)
            return self._by_id[key]
