"""Answer from an open mirror: cones (as the service's VOTable) and matches of many positions.

Both ask the KD-tree for candidates inside a chord a hair longer than the radius and then keep
those whose separation, by :func:`.csc.sky.separation_deg` (astropy's angular_separation, the
formula the service strategies of :mod:`sampbridge.match` use), is within the radius; so a pair
is kept here exactly when it is kept there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from ..csc.sky import separation_deg
from .errors import MirrorError
from .fields import votable_bytes
from .store import Mirror, unit_vectors

__all__ = ["cone_rows", "cone_votable", "write_cone", "match", "table", "sep_arcsec",
           "MATCH_CHUNK"]

#: input positions matched per KD-tree pass (bounds the memory of a 10^6-row match)
MATCH_CHUNK = 200_000


def sep_arcsec(ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: np.ndarray | float,
               dec2: np.ndarray | float) -> np.ndarray:
    """Angular separation in arcsec: :func:`.csc.sky.separation_deg`, as the match strategies."""
    return np.asarray(separation_deg(ra1, dec1, ra2, dec2), dtype=float) * 3600.0


def _chord(radius_deg: float) -> float:
    """Return the chord of ``radius_deg`` on the unit sphere, a hair longer (misses no pair)."""
    return 2.0 * math.sin(math.radians(min(radius_deg, 180.0)) / 2.0) * (1 + 1e-9) + 1e-15


def cone_rows(m: Mirror, ra: float, dec: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the rows within ``radius`` degrees of (ra, dec), nearest first, and their distances.

    Returns
    -------
    tuple of numpy.ndarray
        Row indices into the mirror table and separations in arcsec.
    """
    v = unit_vectors(np.array([ra]), np.array([dec]))[0]
    cand = np.asarray(m.tree.query_ball_point(v, _chord(radius)), dtype=np.intp)
    if not len(cand):
        return cand, np.zeros(0)
    sep = sep_arcsec(ra, dec, m.ra[cand], m.dec[cand])
    keep = sep <= radius * 3600.0
    cand, sep = cand[keep], sep[keep]
    order = np.argsort(sep, kind="stable")
    return cand[order], sep[order]


def cone_votable(m: Mirror, ra: float, dec: float, radius: float, verb: int, name: str
                 ) -> tuple[bytes, int]:
    """Return the cone as the service's VOTable at ``verb`` (its FIELDs) and the row count.

    Raises
    ------
    MirrorError
        When the mirror lacks a column of that VERB (the caller asks the service instead).
    """
    fields = m.fields(verb)
    if fields is None:
        raise MirrorError(f"the mirror does not hold every column of VERB={verb}; build it with "
                          "`sampbridge mirror build --columns all` to answer it")
    rows, sep = cone_rows(m, ra, dec, radius)
    cols = [(sep / 3600.0, None) if f["attrs"]["name"] == "_r" else
            m.column(f["attrs"]["name"], rows) for f in fields]
    params = {"sampbridge_source": "mirror", "csc_release": m.release,
              "mirror_built": str(m.manifest.get("built_at", ""))}
    body = votable_bytes(fields, cols, name=name, params=params,
                         description=f"CSC {m.release} master sources from the local mirror "
                                     "(sampbridge)")
    return body, len(rows)


def write_cone(m: Mirror, ra: float, dec: float, radius: float, verb: int, name: str,
               dest: Path) -> int:
    """Write the cone's VOTable to ``dest`` atomically (mode 0600); return the row count."""
    import os

    body, n = cone_votable(m, ra, dec, radius, verb, name)
    part = dest.with_name(dest.name + ".part")
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return n


def match(m: Mirror, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray, radius: float
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match positions against the mirror: every pair within ``radius`` degrees.

    Parameters
    ----------
    m : Mirror
        The open mirror.
    ra, dec : numpy.ndarray
        Input positions, degrees.
    valid : numpy.ndarray
        Which input rows to match.
    radius : float
        Match radius, degrees.

    Returns
    -------
    tuple of numpy.ndarray
        Input row indices, mirror row indices and separations (arcsec), ordered by input row
        then separation.
    """
    from scipy.spatial import cKDTree  # type: ignore[import-untyped]

    rows = np.flatnonzero(valid)
    chord = _chord(radius)
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(rows), MATCH_CHUNK):
        part = rows[start:start + MATCH_CHUNK]
        vec = unit_vectors(ra[part], dec[part])
        tree = cKDTree(vec, balanced_tree=False, compact_nodes=False)
        sdm = tree.sparse_distance_matrix(m.tree, chord, output_type="ndarray")
        i, j = part[sdm["i"]], np.asarray(sdm["j"], dtype=np.intp)
        if not len(i):
            continue
        sep = sep_arcsec(ra[i], dec[i], m.ra[j], m.dec[j])
        keep = sep <= radius * 3600.0
        out_i.append(i[keep])
        out_j.append(j[keep])
        out_s.append(sep[keep])
    if not out_i:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.intp), np.zeros(0)
    idx, hit, sep = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)
    order = np.lexsort((sep, idx))
    return idx[order].astype(int), hit[order], sep[order]


def table(m: Mirror, rows: np.ndarray, columns: Sequence[str]) -> Table:
    """Return ``columns`` of the mirror at ``rows`` as a Table, nulls masked, with units and UCDs.

    Column types follow the service (the cone's FIELDs, where the mirror recorded them):
    booleans, integers, floats and strings, as :func:`sampbridge.csc.votable.read_table` reads
    them from the service's answers.
    """
    meta: dict[str, dict] = {}
    for fields in m.manifest.get("verbs", {}).values():
        for f in fields:
            meta.setdefault(f["attrs"].get("name"), f)
    out = Table()
    for name in columns:
        if name not in m.stored:
            continue
        values, mask = m.column(name, rows)
        col = MaskedColumn(values, name=name, mask=mask if mask is not None else False)
        f = meta.get(name)
        if f is not None:
            col.unit = f["attrs"].get("unit") or None
            col.description = f.get("description") or None
            if f["attrs"].get("ucd"):
                col.meta["ucd"] = f["attrs"]["ucd"]
        out[name] = col
    return out
