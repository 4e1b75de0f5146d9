"""The daemon: SAMP messages become requests, requests become CSC results, results are sent.

The only package that joins the SAMP layer and the query side; :mod:`.app` wires its rooms
(one job each) together.  ``from sampbridge.daemon import Daemon`` is the way in.
"""

from .app import DESCRIPTION, Daemon
from .overlays import OVERLAY_VERB, OverlayTarget, read_ellipses
from .pointat import SAME_CLICK_SECONDS, SAME_POSITION_ARCSEC, Click
from .queries import MTYPE_CONE, MTYPE_SIAP, MTYPE_TAP
from .status import MTYPE_STATUS
from .tablecalls import MTYPE_MATCH, MatchJob

__all__ = ["DESCRIPTION", "MTYPE_CONE", "MTYPE_MATCH", "MTYPE_SIAP", "MTYPE_STATUS", "MTYPE_TAP",
           "OVERLAY_VERB", "SAME_CLICK_SECONDS", "SAME_POSITION_ARCSEC", "Click", "Daemon",
           "MatchJob", "OverlayTarget", "read_ellipses"]
