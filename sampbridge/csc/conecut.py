"""The ``box`` dialect's distance cut: a box result's rows outside the cone are dropped here."""

from __future__ import annotations

import io

import numpy as np

from .._astropy import quiet_astropy
from .errors import ServiceError
from .tapresult import TapResult
from .votable import check_result, nulls_kept

__all__ = ["cut_to_cone"]


def cut_to_cone(res: TapResult, ra: float, dec: float, radius: float) -> TapResult:
    """Keep the rows of a box result that lie within ``radius`` degrees of (ra, dec).

    The distance is astropy's (:meth:`~astropy.coordinates.SkyCoord.separation`).  The
    document is read with its nulls kept (see :func:`.votable.nulls_kept`) and written again
    as TABLEDATA with astropy's Python writer (its C writer corrupted memory, see
    ``engine._write_votable``); an overflow of the box stays an overflow of the cone.
    """
    if res.rows == 0:
        return res
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io.votable import parse

    with quiet_astropy():
        vot = parse(io.BytesIO(nulls_kept(res.path.read_bytes())), verify="ignore")
        table = vot.get_first_table()
        names = [f.name for f in table.fields]
        if "ra" not in names or "dec" not in names:
            raise ServiceError("TAP cone: the box result has no ra/dec columns to cut it by",
                               url=res.url)
        arr = table.array
        sep = SkyCoord(np.asarray(arr["ra"], float) * u.deg,
                       np.asarray(arr["dec"], float) * u.deg).separation(
            SkyCoord(ra * u.deg, dec * u.deg))
        table.array = arr[np.asarray(sep.deg <= radius)]
        table.format = "tabledata"
        part = res.path.with_name(res.path.name + ".part")
        try:
            with open(part, "wb") as fh:
                vot.to_xml(fh, tabledata_format="tabledata", _debug_python_based_parser=True)
            part.replace(res.path)
        finally:
            part.unlink(missing_ok=True)
    summary = check_result(res.path, res.url, "TAP cone")
    if res.overflow:
        summary.status = "OVERFLOW"
    return TapResult(res.path, summary, res.url, res.seconds, res.job_url, res.dialect)
