"""Match positions against the mirror's HATS export with LSDB: the in-process matcher's pairs.

LSDB's k-D tree cross-match (``Catalog.crossmatch``, partition by partition on the Dask
cluster, with the export's margin, which LSDB also aligns inputs in sky without a partition
to, so that no pair across a partition edge is lost) gives the
candidates: up to ``k`` nearest sources per input inside a radius a hair wider than asked.
Here, on the client, each candidate's separation is computed by the formula of
:func:`sampbridge.mirror.match` (astropy's, :func:`sampbridge.mirror.query.sep_arcsec`) and
kept when it is within the radius, so a pair is kept exactly when the in-process matcher keeps
it.  ``k`` starts at :data:`FIRST_K` and grows fourfold while some input has ``k`` candidates
(so none was cut off).  The pairs come back as (input row, mirror row, separation), in the
order of :func:`sampbridge.mirror.match`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..mirror import Mirror
from ..mirror.query import sep_arcsec
from .cluster import dask_client, quiet_libraries
from .errors import ScaleError, require
from .export import CATALOG_NAME, MARGIN_NAME, read_export

__all__ = ["FIRST_K", "match_lsdb"]

log = logging.getLogger(__name__)

#: neighbours asked per input at first (grown while some input reaches it)
FIRST_K = 8
#: the candidates' radius is this much wider than the match radius (then cut exactly)
WIDEN = 1e-6
#: the finest HEALPix order of the input's partitions (0.46 deg); LSDB counts rows in a dense
#: histogram of this order, 8 s at order 10 (12 * 4**10 cells) and 0.2 s here
LEFT_ORDER = 7


def _left(ra: np.ndarray, dec: np.ndarray, rows: np.ndarray) -> Any:
    """Return the input positions as an LSDB catalogue of a few ten thousand rows a partition."""
    import astropy.units as u
    import cdshealpix  # type: ignore[import-untyped]
    import lsdb
    import pandas as pd  # type: ignore[import-untyped]

    frame = pd.DataFrame({"sb_idx": rows.astype(np.int64), "ra": ra[rows], "dec": dec[rows]})
    # LSDB cannot split a partition finer than LEFT_ORDER: no fewer rows than its fullest pixel
    cells = cdshealpix.lonlat_to_healpix(np.asarray(frame["ra"]) * u.deg,
                                         np.asarray(frame["dec"]) * u.deg, LEFT_ORDER)
    fullest = int(np.unique(cells, return_counts=True)[1].max())
    return lsdb.from_dataframe(frame, ra_column="ra", dec_column="dec", margin_threshold=None,
                               highest_order=LEFT_ORDER,
                               partition_rows=max(20_000, len(rows) // 64 + 1, fullest),
                               should_generate_moc=False)


def _candidates(left: Any, right: Any, k: int, radius_arcsec: float) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    x = left.crossmatch(right, n_neighbors=k, radius_arcsec=radius_arcsec * (1 + WIDEN),
                        suffixes=("_in", "_csc"), suffix_method="all_columns",
                        log_changes=False)
    df = x[["sb_idx_in", "sb_row_csc"]].compute(progress_bar=False)
    return (np.asarray(df["sb_idx_in"], dtype=np.int64),
            np.asarray(df["sb_row_csc"], dtype=np.intp))


def match_lsdb(m: Mirror, ra: np.ndarray, dec: np.ndarray, valid: np.ndarray, radius: float,
               hats_dir: Path, *, scheduler: str | None = None, client: Any = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match positions against the HATS export of ``m`` with LSDB on a Dask cluster.

    Parameters
    ----------
    m : Mirror
        The open mirror the export was made from (pins and separations come from it).
    ra, dec : numpy.ndarray
        Input positions, degrees.
    valid : numpy.ndarray
        Which input rows to match.
    radius : float
        Match radius, degrees.
    hats_dir : Path
        The export (:func:`sampbridge.scale.export_hats`), readable by every worker.
    scheduler : str, optional
        A Dask scheduler address; a local 2-worker cluster by default.
    client : distributed.Client, optional
        A client to run on (``scheduler`` is then not used).

    Returns
    -------
    tuple of numpy.ndarray
        Input row indices, mirror row indices and separations (arcsec), ordered by input row
        then separation: what :func:`sampbridge.mirror.match` returns.

    Raises
    ------
    ExtraMissing
        When the scale extra is not installed.
    ScaleError
        When the export is not of this mirror, or its margin is narrower than the radius.
    """
    require()
    radius_arcsec = radius * 3600.0
    _check_export(m, Path(hats_dir), radius_arcsec)
    rows = np.flatnonzero(valid)
    if not len(rows):
        return np.zeros(0, dtype=int), np.zeros(0, dtype=np.intp), np.zeros(0)
    import lsdb

    t0 = time.perf_counter()
    with quiet_libraries():
        # the catalogue and its margin by path (opening the collection logs a warning on root)
        right = lsdb.open_catalog(Path(hats_dir) / CATALOG_NAME,
                                  columns=["sb_row", "ra", "dec"],
                                  margin_cache=Path(hats_dir) / MARGIN_NAME)
        left = _left(np.asarray(ra, float), np.asarray(dec, float), rows)
        if client is None:
            with dask_client(scheduler) as own:
                i, j = _all_candidates(left, right, radius_arcsec, m.rows, own)
        else:
            i, j = _all_candidates(left, right, radius_arcsec, m.rows, client)
    sep = sep_arcsec(ra[i], dec[i], m.ra[j], m.dec[j])
    keep = sep <= radius_arcsec
    i, j, sep = i[keep].astype(int), j[keep], sep[keep]
    order = np.lexsort((sep, i))
    log.info("matching: %d positions against the mirror with LSDB in %.0f ms", len(rows),
             (time.perf_counter() - t0) * 1000)
    return i[order], j[order], sep[order]


def _all_candidates(left: Any, right: Any, radius_arcsec: float, n_right: int,
                    client: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ask LSDB for k neighbours, k growing until no input is cut off at k."""
    k = FIRST_K
    while True:
        i, j = _candidates(left, right, k, radius_arcsec)
        most = int(np.bincount(i).max()) if len(i) else 0
        if most < k or k >= n_right:
            return i, j
        log.info("matching with LSDB: an input has %d sources within the radius; asking "
                 "for %d", most, 4 * k)
        k *= 4


def _check_export(m: Mirror, path: Path, radius_arcsec: float) -> None:
    info = read_export(path)
    if info is None or not (path / CATALOG_NAME).is_dir() or not (path / MARGIN_NAME).is_dir():
        raise ScaleError(f"there is no HATS export of the mirror at {path}; make one with "
                         f"`sampbridge mirror export-hats {path}`")
    if info.get("mirror_sha256") != m.manifest["sha256"]:
        raise ScaleError(f"the HATS export at {path} was made from another mirror (CSC "
                         f"{info.get('release')}); export it again with `sampbridge mirror "
                         f"export-hats {path}`")
    if float(info.get("margin_arcsec", 0)) < radius_arcsec * (1 + WIDEN):
        raise ScaleError(f"the HATS export at {path} has a margin of {info['margin_arcsec']}\","
                         f" narrower than the match radius {radius_arcsec:g}\"; export it again "
                         "with a wider margin")
