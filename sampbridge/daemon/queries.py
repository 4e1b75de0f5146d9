"""sampbridge's own query MTypes: a cone, a SIAP image query and a TAP query, by SAMP call.

Each validates its params into the request model now and runs on a worker (TAP on the long
pool); the result goes to the viewers and back in the reply.  To add a query MType, add its
name here and a handler beside these, and register it in :mod:`.app`.
"""

from __future__ import annotations

from ..engine import TableResult
from ..model import ConeRequest, SiapRequest, TapRequest
from ..samp import Message
from .calls import CallRunner
from .desk import Desk
from .ticker import CallProgress

__all__ = ["MTYPE_CONE", "MTYPE_SIAP", "MTYPE_TAP", "Queries"]

MTYPE_CONE = "x-sampbridge.query.cone"
MTYPE_SIAP = "x-sampbridge.query.siap"
MTYPE_TAP = "x-sampbridge.query.tap"


class Queries:
    """Handlers of the cone, SIAP and TAP MTypes.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state.
    calls : CallRunner
        Runs the query and replies.
    """

    def __init__(self, desk: Desk, calls: CallRunner) -> None:
        self.desk = desk
        self.calls = calls

    def on_cone(self, msg: Message) -> None:
        """Handle :data:`MTYPE_CONE` (``ra``, ``dec``, ``radius``, ``verb``)."""
        engine = self.desk.engine
        self.calls.query(msg, lambda: ConeRequest.from_params(msg.params, self.desk.cfg),
                         lambda req, _progress: engine.run_cone(req), counter="cones")

    def on_siap(self, msg: Message) -> None:
        """Handle :data:`MTYPE_SIAP` (``ra``, ``dec``, ``size``)."""
        engine = self.desk.engine
        self.calls.query(msg, lambda: SiapRequest.from_params(msg.params, self.desk.cfg),
                         lambda req, _progress: engine.run_siap(req), counter="images")

    def on_tap(self, msg: Message) -> None:
        """Handle :data:`MTYPE_TAP` (``adql``, ``maxrec``, ``name``), on the long pool."""
        self.calls.query(msg, lambda: TapRequest.from_params(msg.params, self.desk.cfg),
                         self._tap, long=True, counter="tap")

    def _tap(self, req: TapRequest, progress: CallProgress) -> TableResult:
        """Run a TAP query, its job's creation and phases (where the engine tells) as progress."""
        return self.desk.engine.run_tap(req, cancel=self.desk.cancel, on_job=progress.on_job,
                                        on_phase=progress.on_phase)
