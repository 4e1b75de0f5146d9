"""Finding a SAMP hub: the standard-profile lockfile, a live-hub check, a hub proxy with timeouts.

Every XML-RPC call to a hub made through this module has a socket timeout, so that a hub that
hangs (or a lockfile left by a dead one) never blocks a thread of sampbridge for good.
"""

from __future__ import annotations

import os
import xmlrpc.client as xmlrpc
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pyvo.samp.hub_proxy import SAMPHubProxy
from pyvo.samp.lockfile_helpers import read_lockfile
from pyvo.samp.utils import SAMPXXEServerProxy, ServerProxyPool

from ..errors import SampBridgeError

__all__ = ["HubUnavailable", "TimeoutHubProxy", "find_running_hub", "lockfile_path",
           "timeout_proxy_class"]

#: the lockfile key of the hub's XML-RPC address
URL_KEY = "samp.hub.xmlrpc.url"


class HubUnavailable(SampBridgeError, RuntimeError):
    """No usable SAMP hub."""


def lockfile_path() -> Path:
    """Return the standard-profile lockfile: ``$SAMP_HUB`` (std-lockurl:) or ``~/.samp``."""
    env = os.environ.get("SAMP_HUB", "")
    if env.startswith("std-lockurl:"):
        url = urlsplit(env[len("std-lockurl:"):])
        if url.scheme in ("file", ""):
            return Path(unquote(url.path))
    return Path.home() / ".samp"


def hub_url(params: dict[str, str]) -> str:
    """Return the hub's XML-RPC address from lockfile ``params`` (``""`` when absent)."""
    return params.get(URL_KEY, "").replace("\\", "")


def timeout_proxy_class(timeout: float) -> type:
    """Return an XML-RPC proxy class (pyvo's XXE-safe one) whose sockets time out.

    Parameters
    ----------
    timeout : float
        Seconds a socket operation may take before it fails.
    """
    class _Transport(xmlrpc.Transport):
        def make_connection(self, host: Any) -> Any:
            conn = super().make_connection(host)
            conn.timeout = timeout
            return conn

    class _Proxy(SAMPXXEServerProxy):
        def __init__(self, uri: str, **kwargs: Any) -> None:
            kwargs.setdefault("transport", _Transport())
            super().__init__(uri, **kwargs)

    return _Proxy


def find_running_hub(timeout: float = 3.0) -> dict[str, str] | None:
    """Return the lockfile contents of a live hub, or ``None`` (a ping with a timeout decides)."""
    path = lockfile_path()
    try:
        params = read_lockfile(str(path))
    except OSError:
        return None
    url = hub_url(params)
    if not url:
        return None
    try:
        timeout_proxy_class(timeout)(url, allow_none=1).samp.hub.ping()
    except Exception:  # any failure means: no live hub there
        return None
    return params


class TimeoutHubProxy(SAMPHubProxy):
    """pyvo's hub proxy, but every XML-RPC call to the hub has a socket timeout.

    Parameters
    ----------
    timeout : float
        Seconds each call to the hub may take.
    """

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def connect(self, hub: Any = None, hub_params: dict | None = None,
                pool_size: int = 20) -> None:
        """Connect to the hub of ``hub_params``, or of the lockfile (ping first).

        Raises
        ------
        HubUnavailable
            When no live hub is found.
        """
        self._connected = False
        self.lockfile = {}
        if hub_params is None:
            hub_params = find_running_hub(self._timeout)
            if hub_params is None:
                raise HubUnavailable(f"no running SAMP hub (lockfile {lockfile_path()})")
        url = hub_url(hub_params)
        self.proxy = ServerProxyPool(pool_size, timeout_proxy_class(self._timeout), url,
                                     allow_none=1)
        self.ping()
        self.lockfile = dict(hub_params)
        self._connected = True
