"""One lock around XML parsing and astropy's readers and writers.

Matching by cones parses several results at once on worker threads; that crashed the process
with SIGSEGV inside expat (``xml.etree`` ``XMLPullParser.feed``, seen two runs in three of the
matching benchmark), and ``warnings.catch_warnings`` changes process-wide state anyway.
Downloads stay parallel; parsing and writing take this lock, one at a time.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["quiet_astropy"]

_LOCK = threading.RLock()


@contextmanager
def quiet_astropy() -> Iterator[None]:
    """Hold the astropy lock with warnings silenced."""
    with _LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
