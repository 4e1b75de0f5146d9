"""The hub sampbridge starts when none runs: pyvo's hub, with its callAndWait race fixed.

``pyvo.samp.SAMPHubServer._call_and_wait`` (pyvo 1.9, identical in astropy) sends the call and
only then records the message id it waits for.  A recipient that replies within those few
microseconds (sampbridge does, for a malformed request) has its reply dropped, and the caller
waits until its timeout.  :class:`Hub` records the id first.  Seen as an intermittent
``Timeout expired!`` in the bad-input tests.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import pyvo.samp as psamp
from pyvo.samp.errors import SAMPProxyError, SAMPProxyTimeoutError

__all__ = ["Hub"]


class Hub(psamp.SAMPHubServer):
    """A :class:`pyvo.samp.SAMPHubServer` whose ``callAndWait`` never loses a fast reply.

    It also wakes the waiting caller as soon as the reply arrives, instead of polling.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replied = threading.Condition()

    def _reply_(self, responder_private_key: str, msg_id: str, response: dict) -> None:
        super()._reply_(responder_private_key, msg_id, response)
        with self._replied:
            self._replied.notify_all()

    def _call_and_wait(self, private_key: str, recipient_id: str, message: dict[str, Any],
                       timeout: str) -> dict[str, Any]:
        self._update_last_activity_time(private_key)
        if private_key not in self._private_keys:
            raise SAMPProxyError(5, f"Private-key {private_key} expired or invalid.")
        if not self._is_subscribed(self._public_id_to_private_key(recipient_id),
                                   message["samp.mtype"]):
            raise SAMPProxyError(2, f"Client {recipient_id} not subscribed to MType "
                                    f"{message['samp.mtype']}")
        wait = int(timeout)
        start = time.time()
        public_id = self._private_keys[private_key][0]
        msg_id = self._get_new_hub_msg_id(public_id, "samp::sync::call")
        self._sync_msg_ids_heap[msg_id] = None          # before the call can be answered
        self._launch_thread(target=self._call_,
                            args=(private_key, public_id, recipient_id, msg_id, message))
        try:
            with self._replied:
                while self._is_running:
                    if self._sync_msg_ids_heap.get(msg_id) is not None:
                        return copy.deepcopy(self._sync_msg_ids_heap[msg_id])
                    left = wait - (time.time() - start) if wait > 0 else 1.0
                    if left <= 0:
                        raise SAMPProxyTimeoutError(1, "Timeout expired!")
                    self._replied.wait(min(left, 1.0))
            return {}
        finally:
            self._sync_msg_ids_heap.pop(msg_id, None)
