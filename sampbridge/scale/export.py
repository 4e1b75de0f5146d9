"""The mirror as a HATS catalogue collection (hats-import): a catalogue and its margin.

The collection holds every mirrored column plus ``sb_row`` (the row of the mirror table), so
that a match read back from LSDB names mirror rows.  Beside it, ``sampbridge.json`` pins it to
the mirror it came from (release, the table's sha256) and records its margin.  It is written
into ``<dir>.building`` and renamed into place whole; folders are 0700 and files 0600.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..mirror import Mirror
from ..mirror.store import private_dir
from .cluster import dask_client, quiet_libraries
from .errors import ScaleError, require

__all__ = ["DEFAULT_MARGIN_ARCSEC", "EXPORT_NAME", "CATALOG_NAME", "MARGIN_NAME",
           "default_hats_dir",
           "ensure_hats", "export_hats", "read_export"]

log = logging.getLogger(__name__)

#: the margin of the export, arcsec: matches up to this radius need no new export
DEFAULT_MARGIN_ARCSEC = 60.0
#: sampbridge's pin file inside the collection
EXPORT_NAME = "sampbridge.json"
#: the name of the catalogue inside the collection
CATALOG_NAME = "csc_master_source"
#: the name of its margin cache (the collection's default margin)
MARGIN_NAME = "csc_master_source_margin"
#: rows per input Parquet file handed to hats-import (bounds the export's memory)
CHUNK_ROWS = 100_000


def default_hats_dir(m: Mirror) -> Path:
    """Return where ``--engine lsdb`` keeps the export of ``m``: ``<release folder>.hats``."""
    return m.path.with_name(m.path.name + ".hats")


def _parquet_chunks(m: Mirror, dest: Path) -> list[Path]:
    """Write the mirror as Parquet files of :data:`CHUNK_ROWS` rows, nulls as nulls."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    files = []
    for n, start in enumerate(range(0, m.rows, CHUNK_ROWS)):
        rows = np.arange(start, min(start + CHUNK_ROWS, m.rows))
        arrays, names = [], []
        for name in m.columns:
            values, mask = m.column(name, rows)
            arrays.append(pa.array(values, mask=mask if mask is not None and mask.any()
                                   else None))
            names.append(name)
        arrays.append(pa.array(rows.astype(np.int64)))
        names.append("sb_row")
        path = dest / f"part{n:05d}.parquet"
        pq.write_table(pa.table(arrays, names=names), path)
        files.append(path)
    return files


def _make_private(top: Path) -> None:
    for base, _dirs, files in os.walk(top):
        os.chmod(base, 0o700)
        for f in files:
            os.chmod(os.path.join(base, f), 0o600)


def export_hats(mirror: Mirror | Path, out_dir: Path, *,
                margin_arcsec: float = DEFAULT_MARGIN_ARCSEC,
                pixel_threshold: int = 200_000, scheduler: str | None = None) -> dict[str, Any]:
    """Export the mirror as a HATS collection (catalogue and margin) at ``out_dir``.

    Parameters
    ----------
    mirror : Mirror or Path
        An open mirror, or a mirror folder (``<root>/<release>``) to open.
    out_dir : Path
        The collection folder to write (replaced whole when it exists).
    margin_arcsec : float
        The margin cache's width: LSDB matches up to this radius against the export.
    pixel_threshold : int
        Most rows in one HEALPix partition (smaller: more, finer partitions).
    scheduler : str, optional
        A Dask scheduler address; a local 2-worker cluster by default.

    Returns
    -------
    dict
        What ``sampbridge.json`` records: ``release``, ``mirror_sha256``, ``rows``,
        ``margin_arcsec``, ``partitions``, ``seconds``, ``catalog``.

    Raises
    ------
    ExtraMissing
        When the scale extra is not installed.
    ScaleError
        When hats-import fails.
    """
    require()
    m = mirror if isinstance(mirror, Mirror) else Mirror.open(Path(mirror))
    try:
        with quiet_libraries():
            return _export(m, Path(out_dir), margin_arcsec, pixel_threshold, scheduler)
    finally:
        if m is not mirror:
            m.close()


def _export(m: Mirror, out: Path, margin: float, threshold: int,
            scheduler: str | None) -> dict[str, Any]:
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client

    t0 = time.monotonic()
    private_dir(out.parent)
    work = out.with_name(out.name + ".building")
    shutil.rmtree(work, ignore_errors=True)
    private_dir(work / "in")
    files = _parquet_chunks(m, work / "in")
    args = (CollectionArguments(output_artifact_name="collection", output_path=work,
                                progress_bar=False, resume=False, tmp_dir=work / "tmp")
            .catalog(output_artifact_name=CATALOG_NAME, input_file_list=files,
                     file_reader="parquet", ra_column="ra", dec_column="dec",
                     pixel_threshold=threshold, drop_empty_siblings=False)
            .add_margin(margin_threshold=margin, is_default=True,
                        output_artifact_name=MARGIN_NAME))
    try:
        with dask_client(scheduler) as client:
            pipeline_with_client(args, client)
    except ScaleError:
        raise
    except Exception as exc:   # hats-import raises many kinds; one sentence for all
        raise ScaleError(f"hats-import could not export the mirror to {out} "
                         f"({type(exc).__name__}: {exc})") from exc
    coll = work / "collection"
    cat = coll / CATALOG_NAME
    import hats

    catalog: Any = hats.read_hats(cat)
    info = {"format": 1, "release": m.release, "mirror_sha256": m.manifest["sha256"],
            "rows": m.rows, "margin_arcsec": margin, "catalog": CATALOG_NAME,
            "partitions": len(catalog.get_healpix_pixels()),
            "seconds": round(time.monotonic() - t0, 2)}
    (coll / EXPORT_NAME).write_text(json.dumps(info, indent=1))
    _make_private(coll)
    if out.exists():
        shutil.rmtree(out)
    os.replace(coll, out)
    shutil.rmtree(work, ignore_errors=True)
    log.info("exported the mirror of CSC %s as HATS (%d partitions, margin %g\") to %s in "
             "%.1f s", m.release, info["partitions"], margin, out, info["seconds"])
    return info


def read_export(path: Path) -> dict[str, Any] | None:
    """Return the pin of the HATS export at ``path``, or None when there is no whole export."""
    try:
        info = json.loads((Path(path) / EXPORT_NAME).read_text())
        return info if isinstance(info, dict) and info.get("format") == 1 else None
    except (OSError, ValueError):
        return None


def ensure_hats(m: Mirror, path: Path | None = None, *, radius_arcsec: float = 0.0,
                scheduler: str | None = None) -> Path:
    """Return a HATS export of ``m`` good for ``radius_arcsec``, exporting it when needed.

    An export of another mirror (another sha256), or with a margin narrower than the radius,
    is made again.
    """
    path = Path(path) if path is not None else default_hats_dir(m)
    info = read_export(path)
    if (info is None or info.get("mirror_sha256") != m.manifest["sha256"]
            or float(info.get("margin_arcsec", 0)) < radius_arcsec):
        why = "none yet" if info is None else "stale or too narrow a margin"
        log.info("exporting the mirror as HATS for LSDB (%s) to %s", why, path)
        export_hats(m, path, margin_arcsec=max(DEFAULT_MARGIN_ARCSEC, radius_arcsec * 1.5),
                    scheduler=scheduler)
    return path
