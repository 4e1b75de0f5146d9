"""Joining and leaving a hub: one pyvo client, registered and subscribed, or closed.

These functions hold no state; :class:`~sampbridge.samp.connection.HubConnection` keeps the
client they return and decides when to call them (only its monitor thread, or ``stop``, closes
one: never a message handler, which would deadlock pyvo's server thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pyvo.samp as psamp

from .discovery import TimeoutHubProxy
from .hub import Hub

__all__ = ["close", "open_client", "ping", "start_hub"]

log = logging.getLogger(__name__)

#: each blocked call_and_wait holds one hub connection: keep enough for the replies
POOL_SIZE = 64

#: MType -> (notification callback, call callback), as pyvo.samp binds them
Callbacks = dict[str, tuple[Callable[..., None], Callable[..., None]]]


def start_hub(lockfile: Path) -> Hub:
    """Start sampbridge's own hub (loopback only, no Web Profile) writing ``lockfile``."""
    hub = Hub(addr="127.0.0.1", web_profile=False, label="sampbridge", lockfile=str(lockfile))
    hub.start(wait=False)
    log.info("started a SAMP hub at %s (lockfile %s)", hub._url, lockfile)
    return hub


def open_client(metadata: dict[str, str], callbacks: Callbacks,
                timeout: float) -> psamp.SAMPIntegratedClient | None:
    """Register with the lockfile's hub and subscribe; None when there is no hub (yet).

    Parameters
    ----------
    metadata : dict
        The client's metadata (``samp.name`` and so on).
    callbacks : dict
        MType -> (notification callback, call callback); each MType is declared
        ``x-samp.mostly-harmless``.
    timeout : float
        Socket timeout of every call to the hub.
    """
    client = psamp.SAMPIntegratedClient(name=metadata["samp.name"], metadata=dict(metadata),
                                        addr="127.0.0.1")
    client.hub = TimeoutHubProxy(timeout=timeout)
    try:
        client.connect(pool_size=POOL_SIZE)
    except Exception as exc:  # no hub yet is normal; try again later
        log.debug("SAMP connect failed: %s", exc)
        _stop_server(client)
        return None
    try:
        md = {"x-samp.mostly-harmless": "1"}
        for mtype, (on_notify, on_call) in callbacks.items():
            client.bind_receive_notification(mtype, on_notify, declare=False, metadata=md)
            client.bind_receive_call(mtype, on_call, declare=False, metadata=md)
        client.declare_subscriptions()
    except Exception as exc:
        log.warning("SAMP subscription failed: %s", exc)
        close(client, unregister=True)
        return None
    return client


def close(client: psamp.SAMPIntegratedClient, unregister: bool) -> None:
    """Stop ``client``'s callback server and drop its hub connection.

    Parameters
    ----------
    client : pyvo.samp.SAMPIntegratedClient
        The client to close.
    unregister : bool
        Say goodbye to the hub first (pointless, and slow, when the hub is gone).
    """
    try:
        if unregister and client.client is not None:
            client.client.unregister()
    except Exception as exc:  # a dead hub cannot be told goodbye
        log.debug("unregister: %s", exc)
    _stop_server(client)
    try:
        client.hub.disconnect()
    except Exception:
        pass


def _stop_server(client: psamp.SAMPIntegratedClient) -> None:
    """Stop the client's own XML-RPC server (the callbacks), if it runs."""
    try:
        if client.client is not None and client.client.is_running:
            client.client.stop()
    except Exception:
        pass


def ping(client: psamp.SAMPIntegratedClient | None) -> bool:
    """Ping the hub through ``client``; False (logged at debug) when it does not answer."""
    if client is None:
        return False
    try:
        client.ping()
        return True
    except Exception as exc:
        log.debug("hub ping failed: %s", exc)
        return False
