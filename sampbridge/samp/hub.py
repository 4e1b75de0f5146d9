"""The hub sampbridge starts when none runs: pyvo's hub, with its callAndWait race fixed.

``pyvo.samp.SAMPHubServer._call_and_wait`` (pyvo 1.9, identical in astropy) sends the call and
only then records the message id it waits for.  A recipient that replies within those few
microseconds (sampbridge does, for a malformed request) has its reply dropped, and the caller
waits until its timeout.  :class:`Hub` records the id first.  Seen as an intermittent
``Timeout expired!`` in the bad-input tests.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pyvo.samp as psamp
from pyvo.samp.errors import SAMPProxyError, SAMPProxyTimeoutError

__all__ = ["Hub"]


class Hub(psamp.SAMPHubServer):
    """A :class:`pyvo.samp.SAMPHubServer` whose ``callAndWait`` never loses a fast reply."""

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
            while self._is_running:
                if 0 < wait <= time.time() - start:
                    raise SAMPProxyTimeoutError(1, "Timeout expired!")
                if self._sync_msg_ids_heap.get(msg_id) is not None:
                    return copy.deepcopy(self._sync_msg_ids_heap[msg_id])
                time.sleep(0.005)
            return {}
        finally:
            self._sync_msg_ids_heap.pop(msg_id, None)
