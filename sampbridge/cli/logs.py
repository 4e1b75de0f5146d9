"""Logging for the command line: the one place sampbridge configures logging."""

from __future__ import annotations

import logging
import re
import sys

__all__ = ["SecretFilter", "setup_logging"]

_SECRET = re.compile(r"(samp\.secret|private[_-]?key|secret)([=:\s'\"]+)[0-9a-zA-Z:_-]{6,}")


class SecretFilter(logging.Filter):
    """Keep SAMP secrets and private keys out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask a secret in ``record``'s message; never drop the record."""
        msg = record.getMessage()
        clean = _SECRET.sub(r"\1\2***", msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


def setup_logging(verbose: int, quiet: bool) -> None:
    """Send sampbridge's log to stderr, filtered: INFO, DEBUG with ``verbose``, WARNING if quiet.

    Parameters
    ----------
    verbose : int
        How often ``-v`` was given (any: DEBUG).
    quiet : bool
        ``-q``: warnings and errors only.
    """
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("sampbridge").setLevel(level)
    # urllib3 logs each retry as a WARNING with its own repr; the error that follows is the
    # one sentence a person needs (its retries show under -v)
    logging.getLogger("urllib3").setLevel(logging.WARNING if verbose else logging.ERROR)
    # pyvo.samp's hub logs through astropy's logger, which has a handler of its own: without
    # this every hub line came out twice, once past the secret filter.
    from astropy import log as astropy_log  # its own Logger class: import it, never create it

    astropy_log.handlers[:] = []
    logging.captureWarnings(True)
