"""One angular separation (astropy's) for the echo guard, SIAP ranking and the match."""

from __future__ import annotations

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from sampbridge.csc.siap import ImageInfo, SiapService
from sampbridge.csc.sky import separation_deg
from sampbridge.flow import EchoGuard
from sampbridge.flow import separation_deg as flow_separation
from sampbridge.match import sep_arcsec

CASES = [
    # (ra1, dec1, ra2, dec2, expected degrees)
    (359.9999, 0.0, 0.0001, 0.0, 0.0002),          # across RA 0/360
    (0.0, 10.0, 360.0, 10.0, 0.0),                 # RA 0 is RA 360
    (10.0, 90.0, 250.0, 90.0, 0.0),                # at the north pole RA means nothing
    (0.0, 89.9999, 180.0, 89.9999, 0.0002),        # over the pole
    (45.0, -90.0, 123.0, -89.0, 1.0),              # from the south pole
    (0.0, 0.0, 180.0, 0.0, 180.0),                 # antipodes
    (246.79, -24.55, 246.79 + 1e-7, -24.55, 1e-7 * np.cos(np.radians(24.55))),  # tiny
]


@pytest.mark.parametrize("ra1, dec1, ra2, dec2, want", CASES)
def test_separation_matches_skycoord_at_ra_wrap_and_poles(ra1, dec1, ra2, dec2, want):
    got = separation_deg(ra1, dec1, ra2, dec2)
    ref = SkyCoord(ra1 * u.deg, dec1 * u.deg).separation(SkyCoord(ra2 * u.deg, dec2 * u.deg))
    assert isinstance(got, float)
    assert got == pytest.approx(ref.deg, abs=1e-12)
    assert got == pytest.approx(want, abs=1e-9)
    assert flow_separation(ra1, dec1, ra2, dec2) == got


def test_arrays_broadcast_and_agree_with_numbers():
    ra1, dec1, ra2, dec2, _ = (np.array(c, dtype=float) for c in zip(*CASES, strict=True))
    many = separation_deg(ra1, dec1, ra2, dec2)
    assert isinstance(many, np.ndarray) and many.shape == (len(CASES),)
    assert many == pytest.approx([separation_deg(*c[:4]) for c in CASES], abs=1e-12)
    one_to_many = separation_deg(0.0, 90.0, ra2, dec2)
    assert one_to_many == pytest.approx(90.0 - dec2, abs=1e-9)
    assert sep_arcsec(ra1, dec1, ra2, dec2) == pytest.approx(many * 3600.0)


def test_the_echo_guard_sees_an_echo_across_ra_zero_and_at_the_pole():
    clock = [0.0]
    guard = EchoGuard(window=5.0, radius_arcsec=5.0, clock=lambda: clock[0])
    assert not guard.is_echo(0.0, 0.0)                  # nothing remembered
    guard.remember((359.9995, 0.0), None, (0.0, 90.0))
    assert guard.is_echo(0.0004, 0.0)                   # 3.2" away, over RA 0/360
    assert not guard.is_echo(0.002, 0.0)                # 9" away
    assert guard.is_echo(200.0, 89.9990)                # 3.6" from the pole, any RA
    clock[0] = 6.0
    assert not guard.is_echo(0.0004, 0.0)               # out of the window


def test_siap_ranks_the_nearest_image_first_across_ra_zero():
    def img(name: str, ra: float | None, dec: float | None, band: str = "b") -> ImageInfo:
        return ImageInfo(url=f"http://x/{name}", title=name, format="image/fits", ra=ra,
                         dec=dec, band=band, size=None)

    images = [img("far", 10.0, 0.0), img("nowhere", None, None), img("near", 359.99, 0.0),
              img("h-band", 0.0, 0.0, "h"), img("mid", 1.0, 0.0)]
    ranked = SiapService("http://x/siap", None).rank(images, 0.01, 0.0, "b")  # type: ignore[arg-type]
    assert [i.title for i in ranked] == ["near", "mid", "far", "nowhere", "h-band"]
