"""The SAMP layer: registration, replies, sending and reconnection.  It knows nothing of the CSC."""

from .connection import Delivery, HubConnection, HubUnavailable, Message

__all__ = ["Delivery", "HubConnection", "HubUnavailable", "Message"]
