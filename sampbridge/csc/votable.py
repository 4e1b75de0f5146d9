"""Check a VOTable file on disk without loading it: its status, its error text and its rows."""

from __future__ import annotations

import html
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._astropy import quiet_astropy
from .errors import QueryError, ServiceError

if TYPE_CHECKING:
    from astropy.table import Table

__all__ = ["VOTableSummary", "StreamScan", "summarize", "check_result", "error_text",
           "nulls_kept", "overflowed", "read_table"]


@dataclass
class VOTableSummary:
    """What a VOTable result file says about itself.

    Attributes
    ----------
    status : str
        ``OK``, ``ERROR`` or ``OVERFLOW`` (the last ``QUERY_STATUS`` seen; ``OK`` if none).
    message : str
        The text of an error or overflow ``INFO``.
    rows : int
        Number of rows of the first table (0 when there is none).
    columns : list of str
        Names of the first table's fields.
    """

    status: str
    message: str
    rows: int
    columns: list[str]

    @property
    def overflow(self) -> bool:
        """True when the service truncated the result at MAXREC."""
        return self.status == "OVERFLOW"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


#: files above this size are scanned by their bytes, not parsed (see :func:`_fast_summary`)
FAST_SCAN_BYTES = 1 << 20
_EDGE = 1 << 16
_ROOT = re.compile(rb"<(?:([A-Za-z_][\w.-]*):)?VOTABLE[\s>]")
_NS = rb"(?:[A-Za-z_][\w.-]*:)?"
_INFO = re.compile(rb"<" + _NS + rb"INFO\b([^>]*?)(/>|>(.*?)</" + _NS + rb"INFO>)", re.S)
_ATTR = re.compile(rb'([A-Za-z_:][\w.:-]*)\s*=\s*(?:"([^"]*)"|\'([^\']*)\')')
_FIELD_NAME = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?FIELD\b[^>]*?\bname\s*=\s*[\"']([^\"']*)")


class StreamScan:
    """Watch a VOTable's bytes go by once: keep its first and last 64 kB and count its rows.

    Fed chunk by chunk while a result streams to disk (see :func:`..http.download`), it lets
    a large TABLEDATA result be summarized without reading the file a second time.  In
    TABLEDATA, ``<`` inside cell text is escaped, so every ``<TR`` tag is a row.
    """

    def __init__(self) -> None:
        self.size = 0
        self.head = b""
        self._tail = bytearray()
        self.rows = 0
        self._tags: tuple[bytes, bytes] | None = None
        self._carry = b""
        self._pending: list[bytes] = []

    @property
    def tail(self) -> bytes:
        """The last 64 kB seen."""
        return bytes(self._tail)

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body."""
        if not chunk:
            return
        self.size += len(chunk)
        if len(self.head) < _EDGE:
            self.head += chunk[:_EDGE - len(self.head)]
        self._tail += chunk
        if len(self._tail) > 2 * _EDGE:
            del self._tail[:-_EDGE]
        if self._tags is None:
            self._pending.append(chunk)
            m = _ROOT.search(self.head)
            if m is None and len(self.head) < _EDGE:
                return                   # the root tag is not in yet: decide later
            prefix = (m.group(1) + b":") if m and m.group(1) else b""
            self._tags = (b"<" + prefix + b"TR>", b"<" + prefix + b"TR ")
            pending, self._pending = self._pending, []
            for c in pending:
                self._count(c)
            return
        self._count(chunk)

    def _count(self, chunk: bytes) -> None:
        tags = self._tags
        assert tags is not None
        buf = self._carry + chunk if self._carry else chunk
        self.rows += buf.count(tags[0]) + buf.count(tags[1])
        # keep a tag's length minus one: a tag cut at the boundary is whole (and counted)
        # in the next buffer only, and no whole tag fits in what is kept
        self._carry = buf[-(len(tags[0]) - 1):]

    def summary(self) -> VOTableSummary | None:
        """Return the summary of a complete TABLEDATA VOTable, or ``None`` if the bytes cannot tell.

        The status and messages come from the INFO elements in the first and last 64 kB (where
        TAP services put QUERY_STATUS, before the table and after it for OVERFLOW).

        Raises
        ------
        ServiceError
            If the body is a VOTable that stops before ``</VOTABLE>``.
        """
        head, tail = self.head, self.tail[-_EDGE:]
        m = _ROOT.search(head)
        if m is None or self._pending:
            return None                      # let the parser say what it is
        if b"<BINARY" in head or b":BINARY" in head or b"TABLEDATA" not in head:
            return None
        prefix = (m.group(1) + b":") if m.group(1) else b""
        if not re.search(rb"</" + re.escape(prefix) + rb"VOTABLE\s*>\s*$", tail):
            raise ServiceError("the service sent a body that is not a complete VOTable "
                               "(it ends before </VOTABLE>)")
        status, message = "OK", ""
        for region in (head, tail):
            for im in _INFO.finditer(region):
                attrs = {k.decode(): (a or b).decode("utf-8", "replace")
                         for k, a, b in _ATTR.findall(im.group(1))}
                name = (attrs.get("name") or attrs.get("ID") or "").upper()
                text = (im.group(3) or b"").decode("utf-8", "replace").strip()
                if name == "QUERY_STATUS":
                    status = attrs.get("value", "OK").upper() or "OK"
                    if status != "OK":
                        message = text or message
                elif name == "ERROR":
                    status, message = "ERROR", attrs.get("value") or text
        columns = [n.decode("utf-8", "replace") for n in _FIELD_NAME.findall(head)]
        return VOTableSummary(status, message, self.rows, columns)


def _fast_summary(path: Path) -> VOTableSummary | None:
    """Summarize a large TABLEDATA VOTable on disk by one pass over its bytes."""
    scan = StreamScan()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            scan.feed(chunk)
    return scan.summary()


def check_body(body: bytes, url: str | None = None, what: str = "query") -> None:
    """Check a small VOTable held in memory by its bytes only: a VOTable, complete, no error.

    Used where the body is parsed by astropy next anyway (matching by cones), so that each
    body goes through one parser only.
    """
    m = _ROOT.search(body[:_EDGE])
    if m is None:
        raise ServiceError(f"{what}: the service sent a body that is not a VOTable", url=url)
    prefix = (m.group(1) + b":") if m.group(1) else b""
    if not re.search(rb"</" + re.escape(prefix) + rb"VOTABLE\s*>\s*$", body[-_EDGE:]):
        raise ServiceError(f"{what}: the service sent a body that is not a complete VOTable",
                           url=url)
    for im in _INFO.finditer(body if len(body) <= 2 * _EDGE else body[:_EDGE] + body[-_EDGE:]):
        attrs = {k.decode(): (a or b).decode("utf-8", "replace")
                 for k, a, b in _ATTR.findall(im.group(1))}
        name = (attrs.get("name") or attrs.get("ID") or "").upper()
        text = (im.group(3) or b"").decode("utf-8", "replace").strip()
        if (name == "QUERY_STATUS" and attrs.get("value", "").upper() == "ERROR") \
                or name == "ERROR":
            raise QueryError(f"{what} was rejected by the service", url=url, status=200,
                             service_message=attrs.get("value") if name == "ERROR" and
                             attrs.get("value") else (text or "QUERY_STATUS=ERROR"))


def error_text(body: bytes) -> str | None:
    """Return the error a VOTable body states (``QUERY_STATUS=ERROR`` or an ``ERROR`` INFO).

    Used on the body of an HTTP error answer, which services send as a small VOTable error
    document: the person then reads the service's own sentence.

    Parameters
    ----------
    body : bytes
        The start (and, for a long body, the end) of a response body.

    Returns
    -------
    str or None
        The error text (``QUERY_STATUS=ERROR`` when the INFO has none); ``None`` when the body
        is not a VOTable or states no error.
    """
    if _ROOT.search(body[:_EDGE]) is None:
        return None
    region = body if len(body) <= 2 * _EDGE else body[:_EDGE] + body[-_EDGE:]
    for im in _INFO.finditer(region):
        attrs = {k.decode(): (a or b).decode("utf-8", "replace")
                 for k, a, b in _ATTR.findall(im.group(1))}
        name = (attrs.get("name") or attrs.get("ID") or "").upper()
        text = html.unescape((im.group(3) or b"").decode("utf-8", "replace")).strip()
        if name == "QUERY_STATUS" and attrs.get("value", "").upper() == "ERROR":
            return " ".join(text.split()) or "QUERY_STATUS=ERROR"
        if name == "ERROR":
            return " ".join((html.unescape(attrs.get("value", "")) or text).split()) \
                or "ERROR"
    return None


def overflowed(body: bytes) -> bool:
    """Return True when a VOTable body says MAXREC cut it short (``QUERY_STATUS=OVERFLOW``)."""
    region = body if len(body) <= 2 * _EDGE else body[:_EDGE] + body[-_EDGE:]
    for im in _INFO.finditer(region):
        attrs = {k.decode(): (a or b).decode("utf-8", "replace")
                 for k, a, b in _ATTR.findall(im.group(1))}
        if (attrs.get("name") or attrs.get("ID") or "").upper() == "QUERY_STATUS" \
                and attrs.get("value", "").upper() == "OVERFLOW":
            return True
    return False


_VERSION = re.compile(rb"(<(?:[A-Za-z_][\w.-]*:)?VOTABLE\b[^>]*?\bversion\s*=\s*[\"'])"
                      rb"1\.[012](?=[\"'])")


def nulls_kept(body: bytes) -> bytes:
    """Return ``body`` with a VOTable 1.0-1.2 root relabelled 1.3, so that astropy keeps nulls.

    astropy (8.0) reads an empty TABLEDATA cell of an integer column as 0, unmasked, when the
    document says version 1.2 or older (empty cells were not nulls before 1.3), but as a
    masked value under 1.3.  Services such as the CXC ones write 1.2 documents with empty cells
    for nulls, so a parser of their results reads them as 1.3.  Only the ``version``
    attribute of the root element changes; the namespace and the data stay as they were.
    """
    return _VERSION.sub(rb"\g<1>1.3", body[:_EDGE], count=1) + body[_EDGE:]


def read_table(source: Path | bytes) -> Table:
    """Parse the first table of a VOTable result with its nulls kept as nulls (masked).

    Parameters
    ----------
    source : Path or bytes
        The VOTable file, or its body.

    Returns
    -------
    astropy.table.Table
        The table, columns named by their ``name`` attributes.
    """
    from astropy.io.votable import parse_single_table

    body = source if isinstance(source, bytes) else Path(source).read_bytes()
    with quiet_astropy():
        return parse_single_table(io.BytesIO(nulls_kept(body)), verify="ignore").to_table(
            use_names_over_ids=True)


# C901: one iterparse pass whose state (status, message, columns, rows, table depth) every
# branch shares; split up, that state would have to travel between the pieces
def summarize(path: Path | bytes, scan: StreamScan | None = None) -> VOTableSummary:  # noqa: C901
    """Scan ``path`` (a file, or a body held in memory) and return its :class:`VOTableSummary`.

    ``scan``, when given, is the :class:`StreamScan` that watched ``path`` being written: a
    TABLEDATA file of any size is then summarized from it, without reading the file again; a
    large TABLEDATA file without one is scanned by its bytes, not parsed.

    TABLEDATA rows are counted as they stream past; BINARY and BINARY2 streams are
    counted by decoding one column with astropy.

    Raises
    ------
    ServiceError
        If the file is not a VOTable (an HTML error page, a truncated body...).
    """
    size = len(path) if isinstance(path, bytes) else path.stat().st_size
    if size == 0:
        raise ServiceError("the service sent an empty body, not a VOTable")
    if not isinstance(path, bytes):
        fast = None
        if scan is not None and scan.size == size:
            fast = scan.summary()       # any size: the rows were counted as they streamed
        elif size > FAST_SCAN_BYTES:
            fast = _fast_summary(path)
        if fast is not None:
            return fast
    source = io.BytesIO(path) if isinstance(path, bytes) else str(path)
    # expat crashed (SIGSEGV) when several threads parsed at once: parse one at a time
    with quiet_astropy():
        status, message, rows = "OK", "", 0
        columns: list[str] = []
        in_table = 0
        binary = False
        tables = 0
        root_seen = False
        try:
            for event, elem in ET.iterparse(source, events=("start", "end")):
                tag = _local(elem.tag)
                if event == "start":
                    if not root_seen:
                        root_seen = True
                        if tag != "VOTABLE":
                            raise ServiceError(f"the service sent a <{tag}> document, "
                                               "not a VOTable")
                    if tag == "TABLE":
                        tables += 1
                        in_table = tables
                    elif tag in ("BINARY", "BINARY2") and in_table == 1:
                        binary = True
                    continue
                if tag == "INFO":
                    name = (elem.get("name") or elem.get("ID") or "").upper()
                    value = elem.get("value") or ""
                    if name == "QUERY_STATUS":
                        status = value.upper() or "OK"
                        if status != "OK":
                            message = (elem.text or "").strip() or message
                    elif name == "ERROR":
                        status = "ERROR"
                        message = value or (elem.text or "").strip()
                elif tag == "FIELD" and in_table == 1:
                    columns.append(elem.get("name") or elem.get("ID") or "")
                elif tag == "TR" and in_table == 1:
                    rows += 1
                elif tag == "TABLE":
                    in_table = 0
                if tag in ("TR", "STREAM", "TD"):
                    elem.clear()
        except ET.ParseError as exc:
            raise ServiceError(f"the service sent a body that is not a complete VOTable ({exc})") \
                from None
    if not root_seen:
        raise ServiceError("the service sent an empty body, not a VOTable")
    if binary and status != "ERROR":
        rows = _count_binary(path)
    return VOTableSummary(status, message, rows, columns)


def _count_binary(path: Path | bytes) -> int:
    from astropy.io.votable import parse

    with quiet_astropy():
        src = io.BytesIO(path) if isinstance(path, bytes) else str(path)
        vot = parse(src, columns=[0], verify="ignore")
    for resource in vot.iter_tables():
        return len(resource.array)
    return 0


def check_result(path: Path | bytes, url: str | None = None, what: str = "query",
                 scan: StreamScan | None = None) -> VOTableSummary:
    """Summarize a result file and raise :class:`QueryError` if the service reported an error.

    ``scan`` is the :class:`StreamScan` fed while the file was downloaded, if any.
    """
    try:
        summary = summarize(path, scan)
    except ServiceError as exc:
        exc.url = exc.url or url
        exc.message = f"{what}: {exc.message}"
        raise
    if summary.status == "ERROR":
        raise QueryError(f"{what} was rejected by the service", url=url, status=200,
                         service_message=summary.message or "QUERY_STATUS=ERROR with no text")
    return summary
