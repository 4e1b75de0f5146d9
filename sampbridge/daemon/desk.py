"""What every room of the daemon shares: the configuration, the engine, counters, the hub."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..activity import Activity
from ..config import Config
from ..engine import Engine
from ..flow import EchoGuard
from ..samp import HubConnection
from ..tables import KnownTables

if TYPE_CHECKING:
    from .calls import CallRunner
    from .delivery import Deliverer
    from .overlays import Overlays

__all__ = ["AnsweringRoom", "Desk"]


class Desk:
    """The state the rooms share; each room holds the desk, not the other rooms' state.

    Parameters
    ----------
    cfg : Config
        Validated configuration.

    Attributes
    ----------
    engine : Engine
        Runs the queries and writes the results.
    cancel : threading.Event
        Set when the daemon stops: running TAP jobs and table fetches give up.
    stats : dict
        Counters for the log and the tests: ``received``, ``queries``, ``delivered``,
        ``errors``, ``echoes``, ``overlays``.
    echo : EchoGuard
        Positions just delivered; a viewer echoing one back is not a new click.
    known : KnownTables
        Tables sent to (or by) sampbridge, for highlight and select.
    activity : Activity
        The last requests and the counters since start, for ``x-sampbridge.status``.
    conn : HubConnection
        The SAMP client; set by the daemon once every room's handlers are known.
    """

    conn: HubConnection

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.engine = Engine(cfg)
        self.cancel = threading.Event()
        self.stats = {"received": 0, "queries": 0, "delivered": 0, "errors": 0, "echoes": 0,
                      "overlays": 0}
        self.echo = EchoGuard(cfg["echo.window"], cfg["echo.radius"])
        self.known = KnownTables(cfg["tables.cache_size"])
        self.activity = Activity()

    def failed(self) -> None:
        """Count a failure that no recorded request carries (an image or overlay of a click)."""
        self.stats["errors"] += 1
        self.activity.count("errors")


class AnsweringRoom:
    """Base of a room that answers with a cone: it runs work, sends results, draws overlays.

    Parameters
    ----------
    desk : Desk
        The daemon's shared state.
    calls : CallRunner
        The worker pools, the replies owed and the refusals.
    deliver : Deliverer
        Sends the tables and images.
    overlays : Overlays
        Draws the sources on the viewers' images.
    """

    def __init__(self, desk: Desk, calls: CallRunner, deliver: Deliverer,
                 overlays: Overlays) -> None:
        self.desk = desk
        self.cfg = desk.cfg
        self.calls = calls
        self.deliver = deliver
        self.overlays = overlays
