"""Distances on the sky: astropy's, in one place for every layer.

It lives in ``sampbridge.csc`` (which imports nothing above it) so that the SIAP client, the
match and the echo guard share it.
"""

from __future__ import annotations

from typing import overload

import numpy as np
from astropy.coordinates import angular_separation

__all__ = ["separation_deg"]


@overload
def separation_deg(ra1: float, dec1: float, ra2: float, dec2: float) -> float: ...
@overload
def separation_deg(ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: np.ndarray | float,
                   dec2: np.ndarray | float) -> np.ndarray | float: ...
def separation_deg(ra1: np.ndarray | float, dec1: np.ndarray | float, ra2: np.ndarray | float,
                   dec2: np.ndarray | float) -> np.ndarray | float:
    """Return the angular distance between two positions, or arrays of them, in degrees.

    astropy's :func:`~astropy.coordinates.angular_separation` (the Vincenty formula that
    :meth:`~astropy.coordinates.SkyCoord.separation` uses: exact at small angles, at the
    poles and across RA 0/360), on plain numbers, without building a SkyCoord per position.

    Parameters
    ----------
    ra1, dec1, ra2, dec2 : float or numpy.ndarray
        Degrees; arrays broadcast against each other.

    Returns
    -------
    float or numpy.ndarray
        Degrees in [0, 180]: a float when every argument is a number.
    """
    out = np.degrees(np.asarray(angular_separation(
        *(np.radians(np.asarray(x, dtype=float)) for x in (ra1, dec1, ra2, dec2)))))
    return float(out) if out.ndim == 0 else out
