"""The SAMP layer: registration, replies, sending and reconnection.  It knows nothing of the CSC.

Its rooms: ``discovery`` (finding a hub), ``registration`` (joining and leaving one),
``message`` (a received message and SAMP's strings), ``directory`` (the other clients),
``sender`` (calls, notifications, replies) and ``connection`` (:class:`HubConnection`, which
wires them together and keeps the registration alive).
"""

from .connection import ClientInfo, Delivery, HubConnection, HubUnavailable, Message

__all__ = ["ClientInfo", "Delivery", "HubConnection", "HubUnavailable", "Message"]
