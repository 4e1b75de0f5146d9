"""Overlays of CSC sources on the image a viewer already shows: DS9 regions, Aladin drawings.

The viewer that sent a click keeps its image; it gets the sources of the cone as the CSC 95 %
error ellipses (``err_ellipse_r0`` and ``err_ellipse_r1``, semi-axes in arcsec, and
``err_ellipse_ang``, the position angle of the major axis in degrees east of north), in one group
or plane that the next overlay replaces.  No SAMP here: this module builds the ``ds9.set``
parameters and the ``script.aladin.send`` script; the daemon sends them.

Angles, as read back from DS9 8.4.1 and drawn by Aladin 12.001 (see tests/test_overlay.py):
a sky ellipse's angle in DS9 (``icrs``/``fk5``) and in Aladin's ``draw ellipse`` is measured
counter-clockwise from the celestial west, so a position angle east of north needs +90 degrees.
DS9 maps that angle through the image's WCS, so the +90 holds for a rotated or a flipped image
too, not only for a north-up one.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TAG", "SourceEllipse", "source_ellipses", "ds9_angle", "ds9_region_text",
           "ds9_region_lines", "ds9_file_url", "write_ds9_regions", "ds9_overlay_params",
           "ds9_clear_params", "aladin_script", "DS9_COMMAND_MAX"]

#: DS9 region group and Aladin plane that hold sampbridge's overlay (the next one replaces it).
TAG = "sampbridge"
#: Longest ``regions command {...}`` sent inline: DS9 8.4.1 cuts a ``ds9.set`` command at 4096
#: bytes without a word (the regions after the cut are lost, or half a region is drawn).
DS9_COMMAND_MAX = 3800
_DS9_HEADER = "# Region file format: DS9 version 4.1\n# CSC 95% error ellipses, by sampbridge\n"
#: Characters that cannot appear in a name inside ``text={...}``/``"..."`` or an Aladin script.
_NAME_BAD = re.compile(r'[{}"\\;\[\]\r\n\t#]')
#: A path DS9 reads from a ``file://`` URL as it is: DS9 does not decode %20 (it looks for a file
#: named ``dir%20x``, fails, and shows a modal error dialog that blocks its SAMP replies).
_URL_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/ +=,@~-]*$")


@dataclass(frozen=True)
class SourceEllipse:
    """One source to draw: name, ICRS position (degrees) and its error ellipse.

    ``r0`` and ``r1`` are the semi-major and semi-minor axes in arcsec (``None`` when the table
    has no ellipse for the source: it is drawn as a point), ``pa`` the position angle of the
    major axis in degrees east of north, in [0, 180).
    """

    name: str
    ra: float
    dec: float
    r0: float | None
    r1: float | None
    pa: float


def _value(row, column: str) -> float | None:  # an astropy Row
    """Return ``row[column]`` as a finite float, or None (missing column, masked, NaN)."""
    if column not in row.colnames:
        return None
    value = row[column]
    if value is None or np.ma.is_masked(value):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean_name(text: object, limit: int = 60) -> str:
    name = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return _NAME_BAD.sub("", name).strip()[:limit]


def source_ellipses(table) -> list[SourceEllipse]:  # an astropy Table
    """Turn a cone result into the ellipses to draw.

    Parameters
    ----------
    table : astropy.table.Table
        Columns ``ra`` and ``dec`` (degrees), and where present ``name``, ``err_ellipse_r0``,
        ``err_ellipse_r1`` and ``err_ellipse_ang``.  A table with ``err_ellipse_r0`` only
        (``VERB=2``) gives circles; a source with no ``err_ellipse_r0`` gives a point.  Rows
        without a finite position are left out.

    Returns
    -------
    list of SourceEllipse
        With ``r0 >= r1`` (axes swapped and the angle turned by 90 degrees when needed).
    """
    out: list[SourceEllipse] = []
    for row in table:
        ra, dec = _value(row, "ra"), _value(row, "dec")
        if ra is None or dec is None:
            continue
        name = _clean_name(row["name"]) if "name" in row.colnames else ""
        r0, r1 = _value(row, "err_ellipse_r0"), _value(row, "err_ellipse_r1")
        pa = _value(row, "err_ellipse_ang") or 0.0
        if r0 is not None and r0 <= 0:
            r0 = None
        if r0 is None:
            r1 = None
        elif r1 is None or r1 <= 0:
            r1 = r0
        elif r1 > r0:
            r0, r1, pa = r1, r0, pa + 90.0
        out.append(SourceEllipse(name, ra % 360.0, dec, r0, r1, pa % 180.0))
    return out


def ds9_angle(pa: float) -> float:
    """DS9's (and Aladin's) angle of a sky ellipse whose major axis has position angle ``pa``.

    Both measure the angle counter-clockwise from the celestial west (the +x axis of a north-up,
    east-left image); a position angle is measured from north through east, hence +90.
    """
    return (pa + 90.0) % 360.0


# ----------------------------------------------------------------------------- DS9
def ds9_region_lines(ellipses: Iterable[SourceEllipse], tag: str = TAG,
                     inline: bool = False) -> list[str]:
    """One DS9 region per source, in ICRS, each with its name as text and the group ``tag``.

    ``inline`` writes the properties as ``text="..." tag=...`` (no braces), the only spelling
    DS9 8.4.1 accepts inside ``regions command {...}``; a region file takes ``text={...}``.
    """
    lines = []
    for e in ellipses:
        props = (f'text="{e.name}" tag={tag}' if inline else f"text={{{e.name}}} tag={{{tag}}}")
        if e.r0 is None:
            lines.append(f"point({e.ra:.7f},{e.dec:+.7f}) # point=x {props}")
        else:
            lines.append(f'ellipse({e.ra:.7f},{e.dec:+.7f},{e.r0:.4f}",{e.r1:.4f}",'
                         f"{ds9_angle(e.pa):.4f}) # {props}")
    return lines


def ds9_region_text(ellipses: Iterable[SourceEllipse], tag: str = TAG) -> str:
    """Return a DS9 region file (ICRS) of the ellipses, each tagged ``tag``, named by text."""
    return _DS9_HEADER + "icrs\n" + "".join(f"{line}\n" for line in ds9_region_lines(
        ellipses, tag))


def ds9_file_url(path: Path | str) -> str | None:
    """Return the ``file://`` URL DS9 reads ``path`` from, or None if DS9 could not read it.

    DS9 8.4.1 takes the path after ``file://`` literally (``%20`` is not decoded, a space is
    fine), so the URL is not percent-encoded, and a path with a character that an URL cannot
    carry as it is (``#``, ``?``, ``%``, non-ASCII...) gets None: send the regions inline then.
    """
    text = os.fspath(path)
    return f"file://{text}" if _URL_SAFE_PATH.match(text) else None


def write_ds9_regions(ellipses: Iterable[SourceEllipse], folder: Path, tag: str = TAG) -> Path:
    """Write the ellipses as a new private (0600) DS9 region file in ``folder``; return it.

    The file is complete when it appears (written aside, then renamed).  The caller removes it
    once DS9 has answered the ``ds9.set`` that loads it (DS9 reads it during that call).
    """
    path = folder / f"overlay-{uuid.uuid4().hex[:12]}.reg"
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii", errors="replace") as fh:
            fh.write(ds9_region_text(ellipses, tag))
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return path


def ds9_clear_params(tag: str = TAG) -> dict[str, str]:
    """``ds9.set`` parameters that delete the group ``tag`` (DS9 answers ok if it is absent)."""
    return {"cmd": f"regions group {tag} delete"}


def _inline_chunks(lines: Sequence[str], max_chars: int) -> list[str]:
    """``regions command {icrs; ...}`` commands, each at most ``max_chars`` long."""
    head, tail = "regions command {icrs; ", "}"
    chunks: list[str] = []
    current: list[str] = []
    size = len(head) + len(tail)
    for line in lines:
        extra = len(line) + (2 if current else 0)
        if current and size + extra > max_chars:
            chunks.append(head + "; ".join(current) + tail)
            current, size, extra = [], len(head) + len(tail), len(line)
        current.append(line)
        size += extra
    if current:
        chunks.append(head + "; ".join(current) + tail)
    return chunks


def ds9_overlay_params(ellipses: Sequence[SourceEllipse], region_url: str | None = None,
                       tag: str = TAG, max_chars: int = DS9_COMMAND_MAX) -> list[dict[str, str]]:
    """Return the ``ds9.set`` parameter maps that replace DS9's overlay with ``ellipses``.

    The first deletes the previous group ``tag``.  With ``region_url`` (from
    :func:`ds9_file_url` of a file from :func:`write_ds9_regions`), one more loads that file:
    ``{"cmd": "regions", "url": region_url}``, whatever the number of sources.  Without it,
    the regions go inline in ``regions command {...}`` commands of at most ``max_chars``.

    Regions load into DS9's current frame: its image, frame and file stay as they are.
    """
    params = [ds9_clear_params(tag)]
    if not ellipses:
        return params
    if region_url is not None:
        return [*params, {"cmd": "regions", "url": region_url}]
    lines = ds9_region_lines(ellipses, tag, inline=True)
    return [*params, *({"cmd": c} for c in _inline_chunks(lines, max_chars))]


# ----------------------------------------------------------------------------- Aladin
def _aladin_angle(pa: float) -> float:
    """Aladin's ``draw ellipse`` angle; never a multiple of 90.

    Aladin builds since 12 skip a rotation by a whole turn (``applySphereRot``), which would
    collapse an axis of an ellipse whose angle plus 90 or 180 is a multiple of 360.
    """
    angle = ds9_angle(pa)
    return angle + 1e-6 if angle % 90.0 == 0.0 else angle


def aladin_script(ellipses: Iterable[SourceEllipse], plane: str = TAG) -> str:
    """Return an Aladin script that replaces the drawing plane ``plane`` with the sources.

    ``rm`` removes the previous plane (a missing one is no error), ``draw newtool`` makes a new
    one on top, then one ``draw ellipse`` (semi-axes in degrees) and one ``draw string`` (the
    name) per source; a source with no ellipse is a ``draw tag``.  Send it with
    ``script.aladin.send`` as a notification (Aladin 12.001 never answers such a call).

    Aladin reads ``draw`` positions in its current coordinate frame, ICRS unless the user
    changed it.
    """
    lines = [f"rm {plane}", f"draw newtool({plane})"]
    for e in ellipses:
        pos = f"{e.ra:.7f},{e.dec:+.7f}"
        if e.r0 is None or e.r1 is None:        # both or neither (read_ellipses)
            lines.append(f'draw tag({pos},"{e.name}")')
            continue
        lines.append(f"draw ellipse({pos},{e.r0 / 3600:.9f},{e.r1 / 3600:.9f},"
                     f"{_aladin_angle(e.pa):.6f})")
        if e.name:
            lines.append(f'draw string({pos},"{e.name}")')
    return "\n".join(lines)
