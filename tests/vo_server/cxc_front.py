#!/usr/bin/env python3
"""A loopback HTTP front that makes the DaCHS mimic answer like the CXC services (issue 12).

DaCHS does the query work; this front reshapes what a client sees at the CSC paths the way the
CXC documents them and its own clients expect (see docs/testing.md and the evidence in
``/work/shared/csc-services.md``):

``/csc21tap``
    ``/capabilities`` list no ADQL geometry and no upload.  Queries that use CONTAINS, CIRCLE,
    POINT, INTERSECTS, BOX, POLYGON, DISTANCE, ... are refused with a VOTable error document
    (``QUERY_STATUS=ERROR``, HTTP 400).  ``dbo.cone_distance(ra, dec, ra0, dec0)`` (arcmin) is
    evaluated by rewriting it to a haversine in plain ADQL math for DaCHS.  In the
    pessimistic shape (``--pessimistic``, ``POST /_front/pessimistic`` or the path prefix
    ``/pessimistic``) ``cone_distance`` is an unknown function as well.  ``/sync`` answers 303 to
    a stored result on the front; ``FORMAT=votable`` is VOTable 1.2 TABLEDATA (booleans ``T``/``F``,
    empty cells for nulls); ``FORMAT=text`` is tab-separated with one ``#`` line per column;
    ``UPLOAD`` is refused.  ``/async`` (UWS) passes through to DaCHS with the URLs rewritten to
    the front.
``/csc21scs/coneSearch``
    VERB=1 ``name, ra, dec``; VERB=2 exactly the 24 documented columns; VERB=3 every
    ``master_source`` column; VOTable 1.2 TABLEDATA, booleans ``T``/``F``, empty cells for nulls.
``/csc21siap/queryImages``
    FITS and JPEG rows (FORMAT=ALL gives both), access URLs
    ``/csccli/retrieveFile?filetype=..&filename=..&version=rel2.1`` that serve gzipped FITS
    (no Content-Encoding: the file itself is ``.fits.gz``) and JPEG; band ``CXO_b``, ``CXO_h``, ...;
    SIZE below 0.05 deg finds nothing; two full-field images of 67 MB (uncompressed), made
    with a fixed seed and cached on disk.

Every other path (``/tap``, DaCHS's own SCS and SIAP paths, ``/getproduct/...``) is proxied to
DaCHS unchanged, so plain DaCHS (the "standard VO service" shape) stays reachable on the
same port.

Run::

    python3 tests/vo_server/cxc_front.py --listen 127.0.0.1:18080 \\
        --dachs http://127.0.0.1:18081 [--dachs-public-url http://127.0.0.1:18080] [--pessimistic]

``--listen 127.0.0.1:0`` picks a free port; the first line on stdout names the URL.
Needs only the standard library and numpy.
"""

from __future__ import annotations

import argparse
import contextlib
import email.parser
import email.policy
import gzip
import html
import http.client
import io
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import numpy as np

SERVER_NAME = "sampbridge-cxc-front/1"
VOT12_NS = "http://www.ivoa.net/xml/VOTable/v1.2"
UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"

#: the VERB=2 columns of the CSC 2.1 cone search, in CXC's order (csc-services.md, csccli.py)
VERB2_COLUMNS = (
    "name", "ra", "dec", "err_ellipse_r0", "conf_flag", "sat_src_flag", "significance",
    "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
    "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w",
    "extent_flag", "hard_hm", "hard_hm_lolim", "hard_hm_hilim",
    "hard_ms", "hard_ms_lolim", "hard_ms_hilim",
    "var_intra_index_b", "var_inter_index_b", "var_intra_index_w", "var_inter_index_w",
)
VERB1_COLUMNS = ("name", "ra", "dec")
#: SCS 1.03 wants UCD1 names on the main columns
SCS_UCDS = {"name": "ID_MAIN", "ra": "POS_EQ_RA_MAIN", "dec": "POS_EQ_DEC_MAIN"}

GEOMETRY_FUNCTIONS = frozenset({
    "CONTAINS", "CIRCLE", "POINT", "INTERSECTS", "BOX", "POLYGON", "DISTANCE", "REGION",
    "CENTROID", "COORD1", "COORD2", "COORDSYS", "AREA",
})

#: SIAP: below this SIZE (deg) the CXC service is reported to find nothing
TINY_SIZE = 0.05
#: the (stack, band) images served full-field size (4096 x 4096 int32, 67 MB uncompressed)
FULL_SIZE_DEFAULT = ("acisfJ1627102m241912_001:b", "acisfJ1627102m241912_001:h")
FULL_NPIX = 4096
FULL_PIXSCALE = 0.492 / 3600.0
IMAGE_GEN_VERSION = "1"
IMAGE_SEED = 20261202
RELEASE = "rel2.1"
FITS_FILETYPE = "stkecorrimg"
JPEG_FILETYPE = "stkecorrimg_jpg"
_FILENAME = re.compile(r"^((?:acis|hrc)f[A-Za-z0-9]+_\d{3})N021_([bhmsuw])_img3\.(fits|jpg)$")

_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                "trailer", "transfer-encoding", "upgrade", "host", "content-length"}


def log(msg: str) -> None:
    """Write one line to stderr."""
    print(f"[cxc_front {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ================================================================================== ADQL
@dataclass
class Token:
    """One ADQL token: ``kind`` is ``ident``, ``string``, ``punct``, ``space`` or ``other``."""

    kind: str
    text: str
    start: int
    end: int


def tokenize(adql: str) -> list[Token]:
    """Split ADQL into tokens, keeping string literals, quoted names and comments whole."""
    toks: list[Token] = []
    i, n = 0, len(adql)
    while i < n:
        ch = adql[i]
        if ch == "'":
            j = i + 1
            while j < n:
                if adql[j] == "'" and j + 1 < n and adql[j + 1] == "'":
                    j += 2
                    continue
                if adql[j] == "'":
                    break
                j += 1
            toks.append(Token("string", adql[i:j + 1], i, min(j + 1, n)))
            i = j + 1
        elif ch == '"':
            j = adql.find('"', i + 1)
            j = n - 1 if j < 0 else j
            toks.append(Token("ident", adql[i:j + 1], i, j + 1))
            i = j + 1
        elif adql.startswith("--", i):
            j = adql.find("\n", i)
            j = n if j < 0 else j
            toks.append(Token("space", adql[i:j], i, j))
            i = j
        elif ch.isspace():
            j = i
            while j < n and adql[j].isspace():
                j += 1
            toks.append(Token("space", adql[i:j], i, j))
            i = j
        elif ch.isalpha() or ch == "_":
            j = i
            while j < n and (adql[j].isalnum() or adql[j] == "_"):
                j += 1
            toks.append(Token("ident", adql[i:j], i, j))
            i = j
        elif ch in "(),.":
            toks.append(Token("punct", ch, i, i + 1))
            i += 1
        else:
            toks.append(Token("other", ch, i, i + 1))
            i += 1
    return toks


def _next_solid(toks: list[Token], k: int) -> int:
    """Index of the next non-space token after ``k`` (or ``len(toks)``)."""
    k += 1
    while k < len(toks) and toks[k].kind == "space":
        k += 1
    return k


def _calls(toks: list[Token]) -> Iterator[tuple[int, str, bool]]:
    """Yield (token index, upper-case name, qualified-with-``dbo.``) for each function call."""
    for k, t in enumerate(toks):
        if t.kind != "ident":
            continue
        nxt = _next_solid(toks, k)
        if nxt >= len(toks) or toks[nxt].text != "(":
            continue
        qualified = (k >= 2 and toks[k - 1].text == "." and toks[k - 2].kind == "ident")
        dbo = qualified and toks[k - 2].text.lower() == "dbo"
        if qualified and not dbo:
            continue
        yield k, t.text.upper(), dbo


class AdqlRefused(Exception):
    """The query uses something the CXC-shaped service does not offer."""


def geometry_used(adql: str) -> str | None:
    """Return the first ADQL geometry function the query calls, or None."""
    for _k, name, dbo in _calls(tokenize(adql)):
        if name in GEOMETRY_FUNCTIONS and not dbo:
            return name
    return None


def _split_args(adql: str, open_pos: int) -> tuple[list[str], int]:
    """Split the arguments of the call whose ``(`` is at ``open_pos``; return them and the end."""
    toks = [t for t in tokenize(adql) if t.start >= open_pos]
    depth, args, cur = 0, [], open_pos + 1
    for t in toks:
        if t.text == "(":
            depth += 1
        elif t.text == ")":
            depth -= 1
            if depth == 0:
                args.append(adql[cur:t.start])
                return [a.strip() for a in args], t.end
        elif t.text == "," and depth == 1:
            args.append(adql[cur:t.start])
            cur = t.end
    raise AdqlRefused("Query parse error: unbalanced parentheses")


def arcmin_expr(ra: str, dec: str, ra0: str, dec0: str) -> str:
    """ADQL for the distance in arcmin between two positions (haversine, plain math functions).

    DaCHS translates ``DISTANCE(POINT, POINT)`` in SELECT and WHERE but not in ORDER BY, so
    the front writes the distance with functions that work everywhere.
    """
    return (f"(DEGREES(2 * ASIN(SQRT(POWER(SIN(RADIANS(({dec}) - ({dec0})) / 2), 2) + "
            f"COS(RADIANS({dec})) * COS(RADIANS({dec0})) * "
            f"POWER(SIN(RADIANS(({ra}) - ({ra0})) / 2), 2)))) * 60.0)")


def rewrite_cone_distance(adql: str, pessimistic: bool) -> str:
    """Rewrite ``dbo.cone_distance(ra, dec, ra0, dec0)`` (arcmin) into ADQL that DaCHS runs.

    Raises
    ------
    AdqlRefused
        For ``cone_distance`` without ``dbo.`` (or with it, in the pessimistic shape) and for a
        call with the wrong number of arguments.
    """
    while True:
        toks = tokenize(adql)
        for k, name, dbo in _calls(toks):
            if name != "CONE_DISTANCE":
                continue
            if pessimistic or not dbo:
                raise AdqlRefused(
                    "Query failed: function not found: cone_distance "
                    "('cone_distance' is not a recognized built-in function name)")
            open_k = _next_solid(toks, k)
            args, end = _split_args(adql, toks[open_k].start)
            if len(args) != 4 or not all(args):
                raise AdqlRefused("Query failed: dbo.cone_distance takes 4 arguments "
                                  "(ra, dec, ra0, dec0)")
            args = [rewrite_cone_distance(a, pessimistic) for a in args]
            start = toks[k - 2].start
            adql = adql[:start] + arcmin_expr(*args) + adql[end:]
            break
        else:
            return adql


def check_adql(adql: str, pessimistic: bool) -> str:
    """Refuse geometry, evaluate ``dbo.cone_distance``; return the ADQL to send to DaCHS."""
    geo = geometry_used(adql)
    if geo:
        raise AdqlRefused(
            f"Query failed: the ADQL geometry function {geo} is not supported by this service. "
            "Select a cone with dbo.cone_distance(ra, dec, ra0, dec0) <= radius_arcmin "
            "together with an ra/dec BETWEEN box.")
    return rewrite_cone_distance(adql, pessimistic)


# ============================================================================== VOTable
@dataclass
class VField:
    """A VOTable FIELD as read from DaCHS."""

    attrs: dict[str, str]
    description: str = ""
    null: str | None = None

    @property
    def name(self) -> str:
        """The column name."""
        return self.attrs.get("name", "")

    @property
    def datatype(self) -> str:
        """The VOTable datatype."""
        return self.attrs.get("datatype", "char")

    @property
    def is_array(self) -> bool:
        """True for a non-character array column."""
        return self.datatype not in ("char", "unicodeChar") and "arraysize" in self.attrs


@dataclass
class VTable:
    """A parsed VOTable result: fields, rows of strings (None = empty), QUERY_STATUS INFOs."""

    fields: list[VField] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    status: str = "OK"
    message: str = ""
    overflow: bool = False


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_votable(data: bytes) -> VTable:
    """Parse a TABLEDATA VOTable (as DaCHS writes it) into a :class:`VTable`.

    Raises
    ------
    ValueError
        If the document is not a VOTable.
    """
    out = VTable()
    cur_row: list[str | None] = []
    try:
        for event, el in ET.iterparse(io.BytesIO(data), events=("start", "end")):
            tag = _local(el.tag)
            if event == "start":
                if tag == "TR":
                    cur_row = []
                continue
            if tag == "TD":
                cur_row.append(el.text)
                el.clear()
            elif tag == "TR":
                out.rows.append(cur_row)
                el.clear()
            elif tag == "FIELD":
                desc = el.find("{*}DESCRIPTION")
                values = el.find("{*}VALUES")
                out.fields.append(VField(dict(el.attrib),
                                         (desc.text or "").strip() if desc is not None else "",
                                         values.get("null") if values is not None else None))
            elif tag == "INFO" and el.get("name") == "Error":      # SCS 1.03 errors
                out.status = "ERROR"
                out.message = (el.get("value") or el.text or "").strip() or "the query failed"
            elif tag == "INFO" and el.get("name") == "QUERY_STATUS":
                value = (el.get("value") or "").upper()
                if value == "OVERFLOW":
                    out.overflow = True
                elif value == "ERROR":
                    out.status = "ERROR"
                    out.message = (el.text or "").strip() or "the query failed"
            elif tag == "BINARY" or tag == "BINARY2":
                raise ValueError("BINARY serialization is not handled here")
    except ET.ParseError as exc:
        raise ValueError(f"not a VOTable: {exc}") from None
    return out


_TRUE = {"1", "t", "true"}
_FALSE = {"0", "f", "false"}


def _cell(f: VField, value: str | None, true: str = "T", false: str = "F") -> str:
    """One cell the CXC way: booleans T/F, nulls (DaCHS's sentinels, NaN) empty."""
    if value is None:
        return ""
    v = value.strip()
    if f.datatype == "boolean":
        low = v.lower()
        return true if low in _TRUE else false if low in _FALSE else ""
    if f.datatype in ("char", "unicodeChar"):
        return value
    if f.is_array:
        return v
    if v == "" or v.lower() == "nan" or (f.null is not None and v == f.null):
        return ""
    return v


_FIELD_ATTRS = ("name", "ID", "datatype", "arraysize", "unit", "ucd", "utype", "xtype")


def _xml_attr(value: str) -> str:
    return html.escape(value, quote=True)


def votable12(fields: list[VField], rows: list[list[str | None]], *, overflow: bool = False,
              description: str = "", ucds: dict[str, str] | None = None,
              table_name: str = "results") -> bytes:
    """Write a VOTable 1.2 TABLEDATA document the way the CXC services answer."""
    ucds = ucds or {}
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             f'<VOTABLE version="1.2" xmlns="{VOT12_NS}" '
             'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n']
    if description:
        parts.append(f"<DESCRIPTION>{html.escape(description, quote=False)}</DESCRIPTION>\n")
    parts.append('<RESOURCE type="results">\n<INFO name="QUERY_STATUS" value="OK"/>\n')
    parts.append(f'<TABLE name="{_xml_attr(table_name)}">\n')
    for f in fields:
        attrs = dict(f.attrs)
        attrs.setdefault("ID", f.name)
        if f.name in ucds:
            attrs["ucd"] = ucds[f.name]
        text = " ".join(f'{k}="{_xml_attr(attrs[k])}"' for k in _FIELD_ATTRS if attrs.get(k))
        if f.description:
            parts.append(f"<FIELD {text}><DESCRIPTION>"
                         f"{html.escape(f.description, quote=False)}</DESCRIPTION></FIELD>\n")
        else:
            parts.append(f"<FIELD {text}/>\n")
    parts.append("<DATA><TABLEDATA>\n")
    for row in rows:
        cells = [_cell(f, v) for f, v in zip(fields, row, strict=False)]
        parts.append("<TR>" + "".join(f"<TD>{html.escape(c, quote=False)}</TD>" if c else "<TD/>"
                                      for c in cells) + "</TR>\n")
    parts.append("</TABLEDATA></DATA>\n</TABLE>\n")
    if overflow:
        parts.append('<INFO name="QUERY_STATUS" value="OVERFLOW"/>\n')
    parts.append("</RESOURCE>\n</VOTABLE>\n")
    return "".join(parts).encode("utf-8")


def text_table(fields: list[VField], rows: list[list[str | None]]) -> bytes:
    """``FORMAT=text`` as CXC's TAP writes it: ``# name<TAB>unit<TAB>description`` per column,
    a header line, then tab-separated rows (see cxcsds/cscwwt code/csc21/*.lis)."""
    lines = [f"# {f.name}\t{f.attrs.get('unit', '')}\t{f.description.splitlines()[0]}"
             if f.description else f"# {f.name}\t{f.attrs.get('unit', '')}\t" for f in fields]
    lines.append("\t".join(f.name for f in fields))
    for row in rows:
        lines.append("\t".join(_cell(f, v, "TRUE", "FALSE").replace("\t", " ")
                               .replace("\n", " ")
                               for f, v in zip(fields, row, strict=False)))
    return ("\n".join(lines) + "\n").encode("utf-8")


def error_votable(message: str) -> bytes:
    """A VOTable 1.2 error document (``QUERY_STATUS=ERROR``)."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<VOTABLE version="1.2" xmlns="{VOT12_NS}">\n'
            f'<RESOURCE type="results">\n<INFO name="QUERY_STATUS" value="ERROR">'
            f"{html.escape(message, quote=False)}</INFO>\n</RESOURCE>\n</VOTABLE>\n"
            ).encode()


# =============================================================================== FITS
def _card(key: str, value: object, comment: str = "") -> str:
    if isinstance(value, bool):
        v = f"{'T' if value else 'F':>20}"
    elif isinstance(value, int):
        v = f"{value:>20d}"
    elif isinstance(value, float):
        v = f"{repr(value).upper():>20}"
    else:
        v = "'" + str(value).replace("'", "''").ljust(8) + "'"
        v = f"{v:<20}"
    card = f"{key:<8}= {v}" + (f" / {comment}" if comment else "")
    return card[:80].ljust(80)


def read_fits_primary(data: bytes) -> tuple[list[str], np.ndarray]:
    """Return the header cards and the data array of a simple FITS primary HDU.

    Raises
    ------
    ValueError
        If ``data`` is not FITS.
    """
    if not data.startswith(b"SIMPLE  ="):
        raise ValueError("not a FITS file")
    cards: list[str] = []
    pos = 0
    while True:
        block = data[pos:pos + 2880].decode("ascii")
        if len(block) < 2880:
            raise ValueError("truncated FITS header")
        pos += 2880
        for i in range(0, 2880, 80):
            cards.append(block[i:i + 80])
        if any(c.startswith("END     ") or c.rstrip() == "END" for c in cards[-36:]):
            break
    values = {c[:8].strip(): c[10:].split("/")[0].strip() for c in cards if c[8:10] == "= "}
    bitpix = int(values["BITPIX"])
    n1, n2 = int(values["NAXIS1"]), int(values["NAXIS2"])
    dtype = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bitpix]
    count = n1 * n2
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=pos).reshape(n2, n1)
    cards = [c for c in cards if c.rstrip() != "END"]
    return cards, arr


def header_value(cards: list[str], key: str) -> str | None:
    """The value of ``key`` in FITS header ``cards`` (strings unquoted), or None."""
    for c in cards:
        if c[:8].strip() == key and c[8:10] == "= ":
            raw = c[10:]
            if raw.lstrip().startswith("'"):
                m = re.match(r"\s*'((?:[^']|'')*)'", raw)
                return m.group(1).replace("''", "'").rstrip() if m else None
            return raw.split("/")[0].strip()
    return None


_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "CRPIX1", "CRPIX2",
               "CDELT1", "CDELT2", "END", "COMMENT"}


# =============================================================================== JPEG
def _dct_matrix() -> np.ndarray:
    k = np.arange(8)[:, None]
    n = np.arange(8)[None, :]
    c = np.sqrt(2 / 8) * np.cos(np.pi * (2 * n + 1) * k / 16)
    c[0, :] = np.sqrt(1 / 8)
    return c


def _zigzag() -> np.ndarray:
    order = sorted(((i, j) for i in range(8) for j in range(8)),
                   key=lambda p: (p[0] + p[1], p[0] if (p[0] + p[1]) % 2 else p[1]))
    return np.array([i * 8 + j for i, j in order])


def encode_gray_jpeg(img: np.ndarray, q: int = 6) -> bytes:
    """Encode an 8-bit grayscale image as a baseline JFIF JPEG (no PIL needed).

    Uses a flat quantisation table and fixed-length Huffman codes (4 bits for the DC sizes,
    8 bits for the AC run/size symbols): valid baseline JPEG, just not the smallest.
    """
    h, w = img.shape
    a = np.pad(img.astype(np.float64), ((0, -h % 8), (0, -w % 8)), mode="edge") - 128.0
    nby, nbx = a.shape[0] // 8, a.shape[1] // 8
    blocks = a.reshape(nby, 8, nbx, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)
    c = _dct_matrix()
    coef = np.einsum("ij,njk,lk->nil", c, blocks, c).reshape(-1, 64)[:, _zigzag()]
    qc = np.rint(coef / q).astype(int)
    dc_syms = list(range(12))
    ac_syms = [0x00, 0xF0] + [(r << 4) | s for r in range(16) for s in range(1, 11)]
    dc_code = {s: (i, 4) for i, s in enumerate(dc_syms)}
    ac_code = {s: (i, 8) for i, s in enumerate(ac_syms)}
    out = bytearray()
    acc = nbits = 0

    def put(value: int, n: int) -> None:
        nonlocal acc, nbits
        acc = (acc << n) | (value & ((1 << n) - 1))
        nbits += n
        while nbits >= 8:
            nbits -= 8
            byte = (acc >> nbits) & 0xFF
            out.append(byte)
            if byte == 0xFF:
                out.append(0)
        acc &= (1 << nbits) - 1

    def sized(v: int) -> tuple[int, int]:
        size = abs(v).bit_length()
        return size, (v if v >= 0 else v + (1 << size) - 1)

    prev = 0
    for row in qc.tolist():
        size, bits = sized(row[0] - prev)
        prev = row[0]
        put(*dc_code[size])
        if size:
            put(bits, size)
        last = 63
        while last > 0 and row[last] == 0:
            last -= 1
        run = 0
        for v in row[1:last + 1]:
            if v == 0:
                run += 1
                continue
            while run > 15:
                put(*ac_code[0xF0])
                run -= 16
            size, bits = sized(v)
            put(*ac_code[(run << 4) | size])
            put(bits, size)
            run = 0
        if last < 63:
            put(*ac_code[0x00])
    if nbits:
        put((1 << (8 - nbits)) - 1, 8 - nbits)

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    def dht(cls_id: int, syms: list[int], length: int) -> bytes:
        counts = [0] * 16
        counts[length - 1] = len(syms)
        return bytes([cls_id]) + bytes(counts) + bytes(syms)

    sof = bytes([8]) + h.to_bytes(2, "big") + w.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    return (b"\xff\xd8" + seg(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
            + seg(0xDB, bytes([0]) + bytes([q] * 64)) + seg(0xC0, sof)
            + seg(0xC4, dht(0x00, dc_syms, 4)) + seg(0xC4, dht(0x10, ac_syms, 8))
            + seg(0xDA, bytes([1, 1, 0x00, 0, 63, 0])) + bytes(out) + b"\xff\xd9")


def preview(arr: np.ndarray, max_side: int = 512) -> np.ndarray:
    """An 8-bit asinh-stretched preview of a counts image, binned to at most ``max_side``."""
    a = np.asarray(arr, dtype=np.float64)
    f = max(1, math.ceil(max(a.shape) / max_side))
    if f > 1:
        h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
        a = a[:h, :w].reshape(h // f, f, w // f, f).sum(axis=(1, 3))
    a = a[::-1]  # FITS row 1 is the bottom of the picture
    s = np.arcsinh(a / max(float(np.median(a)), 0.5))
    hi = float(np.percentile(s, 99.8)) or 1.0
    return np.clip(s / hi * 255.0, 0, 255).astype(np.uint8)


# ================================================================================ DaCHS
class Backend:
    """Plain HTTP to DaCHS with timeouts (http.client: no redirects followed, no decoding)."""

    def __init__(self, base: str, public: str, timeout: float = 300.0) -> None:
        u = urlsplit(base)
        self.base = base.rstrip("/")
        self.public = public.rstrip("/")
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.timeout = timeout

    def open(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[http.client.HTTPConnection,
                                                             http.client.HTTPResponse]:
        """Send a request; return the connection and the (unread) response."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        hdrs = {"Accept-Encoding": "identity", **(headers or {})}
        conn.request(method, path, body=body, headers=hdrs)
        return conn, conn.getresponse()

    def fetch(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send a request and read the whole answer."""
        conn, resp = self.open(method, path, body, headers)
        try:
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def tap_sync(self, query: str, maxrec: str | None = None, lang: str = "ADQL") -> VTable:
        """Run a query on DaCHS's ``/tap/sync`` (TABLEDATA) and parse the answer."""
        params = {"REQUEST": "doQuery", "LANG": lang, "QUERY": query,
                  "RESPONSEFORMAT": "votabletd"}
        if maxrec:
            params["MAXREC"] = maxrec
        status, _h, data = self.fetch(
            "POST", "/tap/sync", urlencode(params).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
        try:
            return parse_votable(data)
        except ValueError:
            return VTable(status="ERROR", message=f"the database answered HTTP {status}")


# =============================================================================== images
@dataclass
class ImageFiles:
    """The files served for one (stack, band): gzipped FITS and a JPEG preview."""

    fits_gz: Path
    jpeg: Path
    npix: int
    pixscale: float
    raw_size: int


class ImageStore:
    """Makes and caches the served images: DaCHS's small ones gzipped, full-field ones generated."""

    def __init__(self, backend: Backend, cache_dir: Path, full: set[tuple[str, str]]) -> None:
        self.backend = backend
        self.dir = cache_dir
        self.full = full
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._done: dict[tuple[str, str], ImageFiles] = {}

    def _key_lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, stack: str, band: str) -> ImageFiles:
        """Return the files for ``stack`` and ``band``, making them on first use.

        Raises
        ------
        FileNotFoundError
            If DaCHS has no such image.
        """
        key = (stack, band)
        with self._key_lock(key):
            if key in self._done:
                return self._done[key]
            status, _h, data = self.backend.fetch(
                "GET", f"/getproduct/csc21/data/images/{quote(stack)}_{quote(band)}.fits")
            if status != 200 or not data.startswith(b"SIMPLE  ="):
                raise FileNotFoundError(f"no image for {stack} band {band}")
            cards, arr = read_fits_primary(data)
            if key in self.full:
                files = self._full_size(stack, band, cards)
            else:
                files = self._small(stack, band, data, cards, arr)
            self._done[key] = files
            return files

    def _small(self, stack: str, band: str, data: bytes, cards: list[str],
               arr: np.ndarray) -> ImageFiles:
        digest = f"{zlib.crc32(data):08x}"
        base = self.dir / f"small-{stack}_{band}-{digest}-v{IMAGE_GEN_VERSION}"
        fits_gz, jpeg = base.with_suffix(".fits.gz"), base.with_suffix(".jpg")
        if not fits_gz.exists():
            _atomic_write(fits_gz, gzip.compress(data, compresslevel=6, mtime=0))
        if not jpeg.exists():
            _atomic_write(jpeg, encode_gray_jpeg(preview(arr)))
        scale = abs(float(header_value(cards, "CDELT1") or 0.0))
        return ImageFiles(fits_gz, jpeg, arr.shape[1], scale, len(data))

    def _full_size(self, stack: str, band: str, cards: list[str]) -> ImageFiles:
        ra0 = float(header_value(cards, "CRVAL1") or 0.0)
        dec0 = float(header_value(cards, "CRVAL2") or 0.0)
        exposure = float(header_value(cards, "EXPOSURE") or 1e5)
        instrument = (header_value(cards, "INSTRUME") or "ACIS").strip()
        half = FULL_NPIX * FULL_PIXSCALE / 2 * math.sqrt(2) + 0.01
        col = f"flux_aper_{band}"
        t = self.backend.tap_sync(
            f"SELECT name, ra, dec, {col} AS f FROM csc21.master_source WHERE "
            f"1=CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra0!r}, {dec0!r}, {half!r})) "
            "ORDER BY name", maxrec="100000")
        if t.status == "ERROR":
            raise FileNotFoundError(f"cannot list the sources of {stack}: {t.message}")
        sources = [(float(r[1] or 0), float(r[2] or 0), float(r[3]) if r[3] else 0.0)
                   for r in t.rows]
        sig = zlib.crc32(repr((IMAGE_GEN_VERSION, FULL_NPIX, ra0, dec0, exposure,
                               sources)).encode())
        base = self.dir / f"full-{stack}_{band}-{sig:08x}-v{IMAGE_GEN_VERSION}"
        fits_gz, jpeg = base.with_suffix(".fits.gz"), base.with_suffix(".jpg")
        raw_size = 2880 * math.ceil((len(cards) + 12) * 80 / 2880) \
            + 2880 * math.ceil(FULL_NPIX * FULL_NPIX * 4 / 2880)
        if fits_gz.exists() and jpeg.exists():
            return ImageFiles(fits_gz, jpeg, FULL_NPIX, FULL_PIXSCALE, raw_size)
        t0 = time.monotonic()
        seed = IMAGE_SEED + zlib.crc32(f"{stack}_{band}".encode()) % 100000
        arr = _full_counts(ra0, dec0, exposure, band, instrument, sources, seed)
        hdr = [_card("SIMPLE", True, "conforms to FITS standard"),
               _card("BITPIX", 32, "array data type"), _card("NAXIS", 2),
               _card("NAXIS1", FULL_NPIX), _card("NAXIS2", FULL_NPIX),
               _card("CRPIX1", (FULL_NPIX + 1) / 2.0), _card("CRPIX2", (FULL_NPIX + 1) / 2.0),
               _card("CDELT1", -FULL_PIXSCALE, "[deg] full-field, native ACIS pixels"),
               _card("CDELT2", FULL_PIXSCALE, "[deg]")]
        hdr += [c for c in cards if c[:8].strip() not in _STRUCTURAL]
        hdr.append("COMMENT Synthetic full-field test image (sampbridge cxc_front).".ljust(80))
        hdr.append("END".ljust(80))
        head = "".join(hdr)
        head += " " * (-len(head) % 2880)
        raw = arr.astype(">i4").tobytes()
        raw += b"\0" * (-len(raw) % 2880)
        tmp = fits_gz.with_name(fits_gz.name + f".{os.getpid()}.part")
        with _shared_open(tmp) as fh, gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=6,
                                                   mtime=0, filename="") as gz:
            gz.write(head.encode("ascii"))
            gz.write(raw)
        os.replace(tmp, fits_gz)
        _atomic_write(jpeg, encode_gray_jpeg(preview(arr)))
        log(f"made the full-field image {stack} {band}: {len(head) + len(raw):,} bytes, "
            f"{fits_gz.stat().st_size:,} gzipped, in {time.monotonic() - t0:.1f} s")
        return ImageFiles(fits_gz, jpeg, FULL_NPIX, FULL_PIXSCALE, len(head) + len(raw))


_BAND_KEV = {"b": 2.3, "s": 0.92, "m": 1.56, "h": 3.8, "u": 0.4, "w": 1.5}


def _full_counts(ra0: float, dec0: float, exposure: float, band: str, instrument: str,
                 sources: list[tuple[float, float, float]], seed: int) -> np.ndarray:
    """A full-field counts image: Poisson background plus the catalogue's sources."""
    n = FULL_NPIX
    lam = np.full((n, n), 0.15 * exposure / 1e5, dtype=np.float64)
    emean = _BAND_KEV.get(band, 2.3) * 1.602176634e-9
    area = 400.0 if instrument == "ACIS" else 200.0
    r0, d0 = math.radians(ra0), math.radians(dec0)
    half = 12
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    for ra, dec, flux in sources:
        if flux <= 0:
            continue
        r, d = math.radians(ra), math.radians(dec)
        cosc = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(r - r0)
        if cosc <= 0:
            continue
        xi = math.degrees(math.cos(d) * math.sin(r - r0) / cosc)
        eta = math.degrees((math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d)
                            * math.cos(r - r0)) / cosc)
        x = (n - 1) / 2.0 - xi / FULL_PIXSCALE
        y = (n - 1) / 2.0 + eta / FULL_PIXSCALE
        ix, iy = int(round(x)), int(round(y))
        if not (half <= ix < n - half and half <= iy < n - half):
            continue
        theta = math.hypot(xi, eta) * 60.0
        sigma = 1.0 + 0.04 * theta * theta
        counts = flux / emean * area * exposure
        g = np.exp(-((xx - (x - ix)) ** 2 + (yy - (y - iy)) ** 2) / (2 * sigma * sigma))
        lam[iy - half:iy + half + 1, ix - half:ix + half + 1] += counts * g / g.sum()
    return np.random.RandomState(seed).poisson(lam).astype(np.int32)


def _shared_open(path: Path) -> io.BufferedWriter:
    # synthetic images shared by the front that setup.sh runs (user gavo) and the fronts
    # that tests start: readable by all, like any cache of public test data
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), "wb")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.{threading.get_ident()}.part")
    with _shared_open(tmp) as fh:
        fh.write(data)
    os.replace(tmp, path)


def retrieve_url(front: str, stack: str, band: str, kind: str) -> str:
    """The CXC-style access URL of an image on the front."""
    name = f"{stack}N021_{band}_img3.{'fits' if kind == 'fits' else 'jpg'}"
    ftype = FITS_FILETYPE if kind == "fits" else JPEG_FILETYPE
    return f"{front}/csccli/retrieveFile?" + urlencode(
        {"filetype": ftype, "filename": name, "version": RELEASE})


# ============================================================================ UWS (local)
@dataclass
class RejectedJob:
    """An async job whose query the front refused: it ends in ERROR when run."""

    job_id: str
    message: str
    params: dict[str, str]
    phase: str = "PENDING"
    created: float = field(default_factory=time.time)
    ended: float | None = None

    def run(self) -> None:
        """Start the job: it fails at once."""
        if self.phase == "PENDING":
            self.phase = "ERROR"
            self.ended = time.time()

    def xml(self) -> bytes:
        """The UWS 1.1 job document."""
        def ts(t: float | None) -> str:
            return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else ""

        def tag(name: str, value: str) -> str:
            return (f"<uws:{name}>{html.escape(value)}</uws:{name}>" if value
                    else f'<uws:{name} xsi:nil="true"/>')

        params = "".join(f'<uws:parameter id="{_xml_attr(k.lower())}">'
                         f"{html.escape(v)}</uws:parameter>" for k, v in self.params.items())
        err = ""
        if self.phase == "ERROR":
            err = ('<uws:errorSummary type="fatal" hasDetail="true"><uws:message>'
                   f"{html.escape(self.message)}</uws:message></uws:errorSummary>")
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:job version="1.1" '
                f'xmlns:uws="{UWS_NS}" xmlns:xlink="http://www.w3.org/1999/xlink" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
                f"<uws:jobId>{self.job_id}</uws:jobId>{tag('ownerId', '')}"
                f"<uws:phase>{self.phase}</uws:phase>{tag('quote', '')}"
                f"{tag('creationTime', ts(self.created))}"
                f"{tag('startTime', ts(self.ended))}{tag('endTime', ts(self.ended))}"
                "<uws:executionDuration>3600</uws:executionDuration>"
                f"{tag('destruction', ts(self.created + 172800))}"
                f"<uws:parameters>{params}</uws:parameters><uws:results/>{err}</uws:job>"
                ).encode()


# ================================================================================ server
@dataclass
class Stored:
    """A sync result kept for its 303 target."""

    path: Path
    ctype: str
    made: float


class FrontState:
    """What the handler threads share."""

    def __init__(self, backend: Backend, images: ImageStore, results_dir: Path,
                 pessimistic: bool, public_url: str | None, verbose: bool) -> None:
        self.backend = backend
        self.images = images
        self.results_dir = results_dir
        self.pessimistic = pessimistic
        self.public_url = public_url
        self.verbose = verbose
        self.lock = threading.Lock()
        self.results: dict[str, Stored] = {}
        self.rejected: dict[str, RejectedJob] = {}
        self.job_format: dict[str, str] = {}

    def store(self, body: bytes, ctype: str) -> str:
        """Keep a sync result; return its id.  Results older than 30 min are dropped."""
        rid = uuid.uuid4().hex
        path = self.results_dir / rid
        _atomic_write(path, body)
        now = time.time()
        with self.lock:
            self.results[rid] = Stored(path, ctype, now)
            old = [k for k, v in self.results.items() if now - v.made > 1800]
            if len(self.results) > 500:
                old += sorted(self.results, key=lambda k: self.results[k].made)[:100]
            for k in set(old):
                st = self.results.pop(k, None)
                if st:
                    st.path.unlink(missing_ok=True)
        return rid


class FrontServer(ThreadingHTTPServer):
    """The threaded HTTP server carrying a :class:`FrontState`."""

    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 refuses connections when 50 clients call at once
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], state: FrontState) -> None:
        super().__init__(addr, Handler)
        self.state = state

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hung up is no error worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log(f"error serving {client_address}: {exc!r}")


_TEXT_FORMATS = {"text", "text/plain", "tsv", "text/tab-separated-values"}
_VOT_FORMATS = {"", "votable", "application/x-votable+xml", "text/xml", "votable/td",
                "votabletd", "application/x-votable+xml;serialization=tabledata"}


class Handler(BaseHTTPRequestHandler):
    """Routes one request: the CXC-shaped endpoints, or a pass-through to DaCHS."""

    server: FrontServer
    protocol_version = "HTTP/1.1"
    server_version = SERVER_NAME
    timeout = 120

    # ---------------------------------------------------------------- plumbing
    def version_string(self) -> str:
        """The Server header."""
        return SERVER_NAME

    def log_message(self, format: str, *args: object) -> None:
        if self.server.state.verbose:
            log(f"{self.address_string()} {format % args}")

    @property
    def st(self) -> FrontState:
        """The shared state."""
        return self.server.state

    def front(self) -> str:
        """The base URL the client used to reach the front."""
        if self.st.public_url:
            return self.st.public_url
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        return f"http://{host}"

    def body(self) -> bytes:
        """The request body (read once, in :meth:`dispatch`)."""
        return self._body

    def send(self, code: int, body: bytes, ctype: str = "text/xml;charset=UTF-8",
             headers: dict[str, str] | None = None) -> None:
        """Send a complete response."""
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_file(self, path: Path, ctype: str, headers: dict[str, str] | None = None) -> None:
        """Stream a file with its Content-Length."""
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(size))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            shutil.copyfileobj(fh, self.wfile, 1 << 20)

    def redirect(self, url: str) -> None:
        """303 See Other."""
        self.send(303, b"", "text/plain", {"Location": url})

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_HEAD(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def do_PUT(self) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        """Route the request; any failure becomes a short 502/500 answer, never a crash."""
        try:
            n = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            n = -1
        if n < 0 or n > 100_000_000 or "chunked" in self.headers.get("Transfer-Encoding", ""):
            self.close_connection = True
            return self.send(411 if n >= 0 else 400, b"send a Content-Length\n", "text/plain")
        # always consume the body, so that a kept-alive connection stays in step
        self._body = self.rfile.read(n) if n else b""
        try:
            self.route()
        except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                self.close_connection = True
                return
            with contextlib.suppress(OSError):
                self.send(502, f"cxc_front: the DaCHS backend failed: {exc}\n".encode(),
                          "text/plain")
        except Exception as exc:  # a test server must keep answering
            log(f"error on {self.command} {self.path}: {exc!r}")
            with contextlib.suppress(OSError):
                self.send(500, f"cxc_front internal error: {exc}\n".encode(), "text/plain")

    # ---------------------------------------------------------------- routing
    def route(self) -> None:
        """Pick the endpoint."""
        u = urlsplit(self.path)
        path = u.path
        self.pessimistic = self.st.pessimistic
        self.prefix = ""
        if path == "/pessimistic" or path.startswith("/pessimistic/"):
            self.pessimistic, self.prefix = True, "/pessimistic"
            path = path[len("/pessimistic"):] or "/"
        self.query_string = u.query
        if path == "/_front/health":
            return self.send(200, b"ok\n", "text/plain")
        if path == "/_front/pessimistic":
            return self.toggle()
        if path.startswith("/csc21tap"):
            return self.tap(path[len("/csc21tap"):])
        if path == "/csc21scs/coneSearch":
            return self.cone()
        if path == "/csc21siap/queryImages":
            return self.siap()
        if path == "/csccli/retrieveFile":
            return self.retrieve()
        if self.prefix:
            return self.send(404, b"not found\n", "text/plain")
        return self.proxy(self.path)

    def toggle(self) -> None:
        """``GET`` says whether the pessimistic shape is on; ``POST on|off`` sets it."""
        if self.command == "POST":
            raw = (self.body().decode() + "&" + self.query_string).lower()
            value = dict(parse_qsl(raw)).get("value", raw.strip("&").strip())
            if value in ("on", "1", "true", "yes"):
                self.st.pessimistic = True
            elif value in ("off", "0", "false", "no"):
                self.st.pessimistic = False
            else:
                return self.send(400, b"say on or off\n", "text/plain")
        self.send(200, b"on\n" if self.st.pessimistic else b"off\n", "text/plain")

    # ---------------------------------------------------------------- parameters
    def params(self) -> tuple[dict[str, str], bool]:
        """Request parameters (names upper-cased) and whether a file was uploaded."""
        pairs = parse_qsl(self.query_string, keep_blank_values=True)
        has_file = False
        if self.command == "POST":
            ctype = self.headers.get("Content-Type", "")
            raw = self.body()
            if ctype.startswith("multipart/form-data"):
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename() is not None:
                        has_file = True
                    if name:
                        payload = part.get_payload(decode=True) or b""
                        pairs.append((str(name), payload.decode("utf-8", "replace")))
            else:
                pairs += parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
        out: dict[str, str] = {}
        for k, v in pairs:
            out[k.upper()] = v
        return out, has_file

    # ---------------------------------------------------------------- TAP
    def tap_base(self) -> str:
        """The front's TAP base URL for this request."""
        return f"{self.front()}{self.prefix}/csc21tap"

    def tap(self, sub: str) -> None:
        """``/csc21tap/...``."""
        if sub in ("", "/"):
            return self.send(200, b"Chandra Source Catalog 2.1 TAP service (test front)\n",
                             "text/plain")
        if sub == "/capabilities":
            return self.capabilities()
        if sub == "/sync":
            return self.tap_sync()
        if sub.startswith("/results/"):
            return self.tap_result(sub[len("/results/"):])
        if sub == "/async" and self.command == "POST":
            return self.tap_async_create()
        if sub == "/async" or sub.startswith("/async/"):
            return self.tap_async(sub[len("/async"):])
        return self.proxy("/csc21tap" + sub + (f"?{self.query_string}"
                                                if self.query_string else ""))

    def capabilities(self) -> None:
        """DaCHS's capabilities without geometry or upload, with ``dbo.cone_distance``."""
        status, _h, data = self.st.backend.fetch("GET", "/csc21tap/capabilities")
        text = data.decode("utf-8")
        text = re.sub(r"<languageFeatures type=\"ivo://ivoa\.net/std/TAPRegExt#features-adqlgeo\""
                      r".*?</languageFeatures>", "", text, flags=re.S)
        text = re.sub(r"<languageFeatures type=\"ivo://org\.gavo\.dc/std/exts#"
                      r"extra-adql-keywords\".*?</languageFeatures>", "", text, flags=re.S)
        udf = ('<languageFeatures type="ivo://ivoa.net/std/TAPRegExt#features-udf">'
               "<feature><form>dbo.cone_distance(ra DOUBLE, dec DOUBLE, ra0 DOUBLE, dec0 DOUBLE)"
               " -&gt; DOUBLE</form><description>Angular distance in arcmin between (ra, dec) "
               "and (ra0, dec0), all in degrees. Combine with an ra/dec BETWEEN box so that the "
               "index is used.</description></feature></languageFeatures>")
        text = re.sub(r"<languageFeatures type=\"ivo://ivoa\.net/std/TAPRegExt#features-udf\""
                      r".*?</languageFeatures>", lambda _m: udf, text, count=1, flags=re.S)
        text = re.sub(r"<uploadMethod [^>]*/>", "", text)
        text = re.sub(r"<uploadLimit>.*?</uploadLimit>", "", text, flags=re.S)
        fmts = ("<outputFormat><mime>application/x-votable+xml</mime><alias>votable</alias>"
                "</outputFormat><outputFormat><mime>text/tab-separated-values</mime>"
                "<alias>text</alias></outputFormat>")
        text = re.sub(r"(<outputFormat.*</outputFormat>)", lambda _m: fmts, text, count=1,
                      flags=re.S)
        tap = self.tap_base()
        for dachs_path, mine in (("/__system__/tap/run/availability", "/availability"),
                                 ("/__system__/tap/run/capabilities", "/capabilities"),
                                 ("/__system__/tap/run/tableMetadata", "/tables"),
                                 ("/__system__/tap/run/examples", "/examples"),
                                 ("/tap", "")):
            text = text.replace(f">{self.st.backend.public}{dachs_path}<", f">{tap}{mine}<")
        self.send(status, text.encode("utf-8"), "text/xml")

    def _refuse(self, message: str) -> None:
        self.send(400, error_votable(message), "text/xml;content=x-votable")

    def _checked(self, p: dict[str, str], has_file: bool) -> tuple[str, str]:
        """The ADQL to run and the output kind (``votable`` or ``text``); raises AdqlRefused."""
        if has_file or p.get("UPLOAD", "").strip():
            raise AdqlRefused("UPLOAD is not supported by this service: table upload is not "
                              "available for the Chandra Source Catalog TAP service")
        lang = p.get("LANG", "ADQL").upper()
        if lang and not lang.startswith("ADQL"):
            raise AdqlRefused(f"Unsupported query language {p['LANG']}")
        fmt = (p.get("FORMAT") or p.get("RESPONSEFORMAT") or "").strip().lower()
        if fmt in _TEXT_FORMATS:
            kind = "text"
        elif fmt in _VOT_FORMATS:
            kind = "votable"
        else:
            raise AdqlRefused(f"Unsupported output FORMAT {fmt}: use votable or text")
        query = p.get("QUERY", "").strip()
        if not query:
            raise AdqlRefused("Missing QUERY parameter")
        return check_adql(query, self.pessimistic), kind

    def _render(self, table: VTable, kind: str) -> tuple[bytes, str]:
        if kind == "text":
            return text_table(table.fields, table.rows), "text/plain;charset=UTF-8"
        return (votable12(table.fields, table.rows, overflow=table.overflow),
                "application/x-votable+xml")

    def tap_sync(self) -> None:
        """Run the query on DaCHS, keep the result, answer 303 to it."""
        p, has_file = self.params()
        try:
            adql, kind = self._checked(p, has_file)
        except AdqlRefused as exc:
            return self._refuse(str(exc))
        table = self.st.backend.tap_sync(adql, p.get("MAXREC") or None)
        if table.status == "ERROR":
            return self._refuse(f"Query failed: {table.message}")
        body, ctype = self._render(table, kind)
        rid = self.st.store(body, ctype)
        self.redirect(f"{self.tap_base()}/results/{rid}")

    def tap_result(self, rid: str) -> None:
        """A stored sync result."""
        with self.st.lock:
            st = self.st.results.get(rid)
        if st is None or not st.path.exists():
            return self.send(404, error_votable("No such result (it may have expired)"))
        self.send_file(st.path, st.ctype)

    def tap_async_create(self) -> None:
        """Create a job: refused queries become local jobs that end in ERROR."""
        p, has_file = self.params()
        try:
            adql, kind = self._checked(p, has_file)
        except AdqlRefused as exc:
            jid = "rej" + uuid.uuid4().hex[:12]
            job = RejectedJob(jid, str(exc), {k: v for k, v in p.items() if k != "UPLOAD"})
            if p.get("PHASE", "").upper() == "RUN":
                job.run()
            with self.st.lock:
                self.st.rejected[jid] = job
            return self.redirect(f"{self.tap_base()}/async/{jid}")
        fwd = {"REQUEST": p.get("REQUEST", "doQuery"), "LANG": p.get("LANG", "ADQL"),
               "QUERY": adql, "RESPONSEFORMAT": "votabletd"}
        for k in ("MAXREC", "PHASE", "RUNID", "EXECUTIONDURATION", "DESTRUCTION"):
            if p.get(k):
                fwd[k] = p[k]
        status, headers, data = self.st.backend.fetch(
            "POST", "/tap/async", urlencode(fwd).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
        loc = headers.get("location", "")
        jid = loc.rstrip("/").rsplit("/", 1)[-1] if loc else ""
        if jid:
            with self.st.lock:
                self.st.job_format[jid] = kind
        self._relay(status, headers, data)

    def _rewrite(self, text: str) -> str:
        tap = self.tap_base()
        pub = self.st.backend.public
        for old in (f"{pub}/__system__/tap/run/async", f"{pub}/tap/async",
                    f"{pub}/csc21tap/async"):
            text = text.replace(old, f"{tap}/async")
        return text

    def _relay(self, status: int, headers: dict[str, str], data: bytes) -> None:
        out = {}
        if "location" in headers:
            out["Location"] = self._rewrite(headers["location"])
        ctype = headers.get("content-type", "application/octet-stream")
        if "xml" in ctype or "text" in ctype:
            data = self._rewrite(data.decode("utf-8", "replace")).encode("utf-8")
        self.send(status, data, ctype, out)

    def tap_async(self, rest: str) -> None:
        """A UWS request on a job (or on the job list)."""
        parts = [x for x in rest.split("/") if x]
        if parts and parts[0] in self.st.rejected:
            return self.rejected_job(self.st.rejected[parts[0]], parts[1:])
        body = self.body() if self.command in ("POST", "PUT") else None
        if body and parts and parts[-1] == "parameters":
            return self.send(403, error_votable("Job parameters cannot be changed here"))
        path = "/__system__/tap/run/async" + rest
        if self.query_string:
            path += "?" + self.query_string
        hdrs = {}
        if body is not None:
            hdrs["Content-Type"] = self.headers.get("Content-Type",
                                                    "application/x-www-form-urlencoded")
        status, headers, data = self.st.backend.fetch(self.command, path, body, hdrs)
        if (len(parts) >= 3 and parts[1] == "results" and status == 200
                and self.command == "GET"):
            try:
                table = parse_votable(data)
            except ValueError:
                table = None
            if table is not None:
                if table.status == "ERROR":
                    return self.send(200, error_votable(table.message))
                kind = self.st.job_format.get(parts[0], "votable")
                body_out, ctype = self._render(table, kind)
                return self.send(200, body_out, ctype)
        self._relay(status, headers, data)

    def rejected_job(self, job: RejectedJob, rest: list[str]) -> None:
        """The UWS resources of a refused job."""
        base = f"{self.tap_base()}/async/{job.job_id}"
        p, _ = self.params() if self.command == "POST" else ({}, False)
        if self.command == "DELETE" or (self.command == "POST" and not rest
                                        and p.get("ACTION", "").upper() == "DELETE"):
            with self.st.lock:
                self.st.rejected.pop(job.job_id, None)
            return self.redirect(f"{self.tap_base()}/async")
        if not rest:
            return self.send(200, job.xml())
        what = rest[0]
        if what == "phase":
            if self.command == "POST":
                phase = p.get("PHASE", "").upper()
                if phase == "RUN":
                    job.run()
                elif phase == "ABORT" and job.phase == "PENDING":
                    job.phase, job.ended = "ABORTED", time.time()
                return self.redirect(base)
            return self.send(200, job.phase.encode(), "text/plain")
        if what == "error":
            return self.send(200, error_votable(job.message))
        if what == "results":
            return self.send(200, f'<uws:results xmlns:uws="{UWS_NS}"/>'.encode())
        if what == "parameters":
            return self.send(200, job.xml())
        return self.send(404, b"no such job resource\n", "text/plain")

    # ---------------------------------------------------------------- cone search
    def cone(self) -> None:
        """The SCS 1.03 cone search, CXC-shaped."""
        p = dict(parse_qsl(self.query_string, keep_blank_values=True))
        if self.command == "POST":
            p.update(parse_qsl(self.body().decode("utf-8", "replace"), keep_blank_values=True))
        try:
            ra, dec, sr, verb = _cone_params(p)
        except ValueError as exc:
            return self.send(200, error_votable(str(exc)))
        # DaCHS's own cone search (VERB=3, sorted by distance) is far faster than a TAP query
        # naming 24 columns; the front keeps the columns of the asked VERB
        qs = urlencode({"RA": repr(ra), "DEC": repr(dec), "SR": repr(sr), "VERB": "3",
                        "RESPONSEFORMAT": "votabletd", "MAXREC": "10000000"})
        status, _h, data = self.st.backend.fetch("GET", f"/csc21/q/coneSearch/scs.xml?{qs}")
        try:
            table = parse_votable(data)
        except ValueError:
            table = VTable(status="ERROR", message=f"the database answered HTTP {status}")
        names = [f.name for f in table.fields]
        want = {1: list(VERB1_COLUMNS), 2: list(VERB2_COLUMNS)}.get(
            verb, [n for n in names if n != "_r"])
        missing = [c for c in want if c not in names]
        if table.status == "ERROR" or missing:
            why = table.message if table.status == "ERROR" else f"no column {missing[0]}"
            return self.send(200, error_votable(f"Cone search failed: {why}"))
        idx = [names.index(c) for c in want]
        body = votable12([table.fields[i] for i in idx],
                         [[row[i] for i in idx] for row in table.rows],
                         ucds=SCS_UCDS, table_name="results",
                         description="Chandra Source Catalog 2.1 master sources "
                                     "(cone search test front)")
        self.send(200, body, "text/xml;content=x-votable")

    # ---------------------------------------------------------------- SIAP
    def siap(self) -> None:
        """SIAP 1.0 queryImages, CXC-shaped."""
        p = {k.upper(): v for k, v in parse_qsl(self.query_string, keep_blank_values=True)}
        try:
            ra, dec = (float(x) for x in p["POS"].split(","))
            sizes = [float(x) for x in (p.get("SIZE") or "").split(",") if x.strip()]
            if not sizes or not all(math.isfinite(s) and s >= 0 for s in sizes):
                raise ValueError
            if not (math.isfinite(ra) and -90.0 <= dec <= 90.0):
                raise ValueError
        except (KeyError, ValueError):
            return self.send(200, error_votable(
                "Image query failed: POS=ra,dec and SIZE (degrees) are required"))
        fmt = (p.get("FORMAT") or "ALL").strip()
        low = fmt.lower()
        want_fits = low == "all" or "fits" in low          # METADATA: no rows at all
        want_jpeg = low in ("all", "graphic") or "jpeg" in low
        qs = urlencode({"POS": f"{ra!r},{dec!r}", "SIZE": p["SIZE"], "FORMAT": "image/fits",
                        "INTERSECT": p.get("INTERSECT", "OVERLAPS"),
                        "RESPONSEFORMAT": "votabletd"})
        status, _h, data = self.st.backend.fetch("GET", f"/csc21/q/queryImages/siap.xml?{qs}")
        try:
            table = parse_votable(data)
        except ValueError:
            return self.send(200, error_votable(f"Image query failed (backend HTTP {status})"))
        if table.status == "ERROR":
            return self.send(200, error_votable(f"Image query failed: {table.message}"))
        if max(sizes) < TINY_SIZE:
            table.rows = []
        rows = self._siap_rows(table, want_fits, want_jpeg)
        body = votable12(table.fields, rows, table_name="results",
                         description="Chandra Source Catalog 2.1 images (SIAP test front)")
        self.send(200, body, "text/xml;content=x-votable")

    def _siap_rows(self, table: VTable, want_fits: bool,
                   want_jpeg: bool) -> list[list[str | None]]:
        idx = {f.name: i for i, f in enumerate(table.fields)}
        out: list[list[str | None]] = []
        front = self.front()
        for row in table.rows:
            stack = row[idx["detect_stack_id"]] or ""
            band = row[idx["band"]] or ""
            try:
                files = self.st.images.get(stack, band)
            except FileNotFoundError:
                continue
            for kind in ("jpeg", "fits"):
                if (kind == "fits" and not want_fits) or (kind == "jpeg" and not want_jpeg):
                    continue
                r = list(row)
                path = files.fits_gz if kind == "fits" else files.jpeg
                r[idx["accref"]] = retrieve_url(front, stack, band, kind)
                r[idx["mime"]] = "image/fits" if kind == "fits" else "image/jpeg"
                r[idx["accsize"]] = str(path.stat().st_size)
                r[idx["band"]] = f"CXO_{band}"
                full = files.npix == FULL_NPIX
                r[idx["imageTitle"]] = (f"{stack} {band} band "
                                        f"{'full-field ' if full else ''}"
                                        f"{'image' if kind == 'fits' else 'preview (JPEG)'}")
                if full:
                    _full_geometry(r, idx, files)
                if kind == "jpeg":
                    r[idx["nAxes"]] = "2"
                out.append(r)
        return out

    # ---------------------------------------------------------------- files
    def retrieve(self) -> None:
        """``/csccli/retrieveFile``: gzipped FITS (no Content-Encoding) or a JPEG."""
        p = dict(parse_qsl(self.query_string, keep_blank_values=True))
        name, ftype = p.get("filename", ""), p.get("filetype", "")
        version = p.get("version", RELEASE)
        m = _FILENAME.match(name)
        if not m or version != RELEASE:
            return self.send(404, f"File not found: {name}\n".encode(), "text/plain")
        stack, band, ext = m.groups()
        if ftype != (FITS_FILETYPE if ext == "fits" else JPEG_FILETYPE):
            return self.send(400, f"filetype {ftype} does not match {name}\n".encode(),
                             "text/plain")
        try:
            files = self.st.images.get(stack, band)
        except FileNotFoundError:
            return self.send(404, f"File not found: {name}\n".encode(), "text/plain")
        if ext == "fits":
            return self.send_file(files.fits_gz, "application/octet-stream", {
                "Content-Disposition": f'attachment; filename="{name}.gz"'})
        self.send_file(files.jpeg, "image/jpeg")

    # ---------------------------------------------------------------- proxy
    def proxy(self, target: str) -> None:
        """Pass the request to DaCHS unchanged and stream its answer back."""
        body = self.body() if "Content-Length" in self.headers else None
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        if body is not None:
            hdrs["Content-Length"] = str(len(body))
        conn, resp = self.st.backend.open(self.command, target, body, hdrs)
        try:
            self.log_request(resp.status)
            self.send_response_only(resp.status, resp.reason)
            length = resp.getheader("Content-Length")
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_HEADERS:
                    self.send_header(k, v)
            chunked = length is None and self.command != "HEAD" and resp.status not in (
                204, 304)
            if length is not None:
                self.send_header("Content-Length", length)
            elif chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", "0")
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                chunk = resp.read1(1 << 16) if hasattr(resp, "read1") else resp.read(1 << 16)
                if not chunk:
                    break
                if chunked:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                else:
                    self.wfile.write(chunk)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            conn.close()


def _cone_params(p: dict[str, str]) -> tuple[float, float, float, int]:
    """RA, DEC, SR (case-sensitive, as CXC documents) and VERB; raises ValueError."""
    missing = [k for k in ("RA", "DEC", "SR") if not p.get(k, "").strip()]
    if missing:
        raise ValueError(f"Cone search failed: missing required parameter(s) "
                         f"{', '.join(missing)} (RA, DEC, SR in decimal degrees)")
    try:
        ra, dec, sr = float(p["RA"]), float(p["DEC"]), float(p["SR"])
    except ValueError:
        raise ValueError("Cone search failed: RA, DEC and SR must be decimal numbers") from None
    if not (math.isfinite(ra) and math.isfinite(dec) and math.isfinite(sr)):
        raise ValueError("Cone search failed: RA, DEC and SR must be finite")
    if not -90.0 <= dec <= 90.0:
        raise ValueError("Cone search failed: DEC must be between -90 and 90")
    if sr <= 0.0 or sr > 90.0:
        raise ValueError("Cone search failed: SR must be between 0 and 90 degrees")
    try:
        verb = int(p.get("VERB", "2") or "2")
    except ValueError:
        raise ValueError("Cone search failed: VERB must be 1, 2 or 3") from None
    return ra % 360.0, dec, sr, min(max(verb, 1), 3)


def _full_geometry(r: list[str | None], idx: dict[str, int], files: ImageFiles) -> None:
    n, s = files.npix, files.pixscale
    fmt = "{:.10g}".format
    if "pixelSize" in idx:
        r[idx["pixelSize"]] = f"{n} {n}"
    if "pixelScale" in idx:
        r[idx["pixelScale"]] = f"{fmt(s)} {fmt(s)}"
    if "wcs_refPixel" in idx:
        r[idx["wcs_refPixel"]] = f"{fmt((n + 1) / 2)} {fmt((n + 1) / 2)}"
    if "wcs_cdmatrix" in idx:
        r[idx["wcs_cdmatrix"]] = f"{fmt(-s)} 0.0 0.0 {fmt(s)}"
    if "coverage" in idx and "centerAlpha" in idx:
        ra = float(r[idx["centerAlpha"]] or 0)
        dec = float(r[idx["centerDelta"]] or 0)
        h = n * s / 2
        dra = h / max(math.cos(math.radians(dec)), 1e-6)
        pts = [(ra - dra, dec - h), (ra - dra, dec + h), (ra + dra, dec + h), (ra + dra, dec - h)]
        r[idx["coverage"]] = " ".join(f"{fmt(a % 360)} {fmt(b)}" for a, b in pts)


# ================================================================================== main
def default_cache_dir() -> Path:
    """``$SAMPBRIDGE_FRONT_CACHE``, else /var/cache/sampbridge-front if writable, else $TMPDIR."""
    env = os.environ.get("SAMPBRIDGE_FRONT_CACHE")
    candidates = [Path(env)] if env else []
    candidates += [Path("/var/cache/sampbridge-front"),
                   Path(tempfile.gettempdir()) / f"sampbridge-front-{os.getuid()}"]
    for c in candidates:
        try:
            c.mkdir(mode=0o755, parents=True, exist_ok=True)
            probe = c / f".probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return c
        except OSError:
            continue
    raise SystemExit("cxc_front: no writable cache directory (set SAMPBRIDGE_FRONT_CACHE)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:18080", help="HOST:PORT (port 0: any free)")
    ap.add_argument("--dachs", default="http://127.0.0.1:18081", help="DaCHS base URL")
    ap.add_argument("--dachs-public-url", default=None,
                    help="the base URL DaCHS writes into its answers ([web]serverURL); "
                         "default: --dachs")
    ap.add_argument("--public-url", default=None,
                    help="the front's own base URL in answers (default: from the Host header)")
    ap.add_argument("--pessimistic", action="store_true",
                    default=os.environ.get("SAMPBRIDGE_FRONT_PESSIMISTIC", "") in ("1", "on"),
                    help="cone_distance is unknown too (also: POST /_front/pessimistic on)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="where generated images live")
    ap.add_argument("--full-size", default=",".join(FULL_SIZE_DEFAULT),
                    help="STACK:BAND,... images served full-field size")
    ap.add_argument("--prepare", action="store_true",
                    help="make the full-field images, then exit (for setup scripts)")
    ap.add_argument("--pidfile", type=Path, default=None)
    ap.add_argument("--verbose", action="store_true")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the front until SIGTERM or SIGINT."""
    args = parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    cache = args.cache_dir or default_cache_dir()
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    backend = Backend(args.dachs, args.dachs_public_url or args.dachs)
    full = {tuple(x.split(":", 1)) for x in args.full_size.split(",") if ":" in x}
    images = ImageStore(backend, cache, full)  # type: ignore[arg-type]
    if args.prepare:
        for stack, band in sorted(full):
            f = images.get(stack, band)
            print(f"{stack} {band}: {f.raw_size:,} bytes, {f.fits_gz.stat().st_size:,} gzipped "
                  f"({f.fits_gz})")
        return 0
    results = Path(tempfile.mkdtemp(prefix="cxc-front-results-"))
    state = FrontState(backend, images, results, args.pessimistic, args.public_url,
                       args.verbose)
    server = FrontServer((host or "127.0.0.1", int(port)), state)
    bound = "{}:{}".format(*server.server_address[:2])
    if args.pidfile:
        args.pidfile.write_text(f"{os.getpid()}\n")

    def stop(_sig: int, _frm: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def warm() -> None:
        for stack, band in sorted(full):
            try:
                images.get(stack, band)
            except Exception as exc:  # made again on first use
                log(f"could not prepare {stack} {band} yet: {exc}")

    threading.Thread(target=warm, daemon=True, name="warm-images").start()
    print(f"cxc_front listening on http://{bound} (DaCHS at {args.dachs}"
          f"{', pessimistic' if args.pessimistic else ''})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        shutil.rmtree(results, ignore_errors=True)
        if args.pidfile:
            with contextlib.suppress(OSError):
                args.pidfile.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
