"""The one error base of sampbridge, and the kinds that are not a failure of a service.

Every error sampbridge raises on purpose derives from :class:`SampBridgeError`: the CSC layer's
``CSCError``, the request model's ``RequestError``, the configuration's ``ConfigError`` and the
SAMP layer's ``HubUnavailable``. A boundary (the command line, a SAMP call handler, the query
folder) catches the base and says its one sentence.

This module imports nothing of sampbridge, so that ``sampbridge.csc`` and ``sampbridge.samp``,
which import nothing above them, may derive from it (the import contracts in pyproject.toml
allow exactly this module).
"""

from __future__ import annotations

__all__ = ["Cancelled", "SampBridgeError"]


class SampBridgeError(Exception):
    """Base class of every error sampbridge raises on purpose; its text is one sentence."""


class Cancelled(SampBridgeError):
    """A query was cancelled by its caller (e.g. at shutdown); no service failed.

    Parameters
    ----------
    message : str
        A sentence a person can act on.
    url : str, optional
        The URL of the cancelled request (for TAP, the job).

    Attributes
    ----------
    job_deleted : bool or None
        Whether the service confirmed the deletion of the async job (``None`` when no job was
        made, or its deletion was not tried yet).
    """

    job_deleted: bool | None = None

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status: int | None = None
        self.service_message: str | None = None
