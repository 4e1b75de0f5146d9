"""The mirror's errors: one sentence each, under :class:`sampbridge.errors.SampBridgeError`."""

from __future__ import annotations

from ..errors import SampBridgeError

__all__ = ["MirrorError", "MirrorUnusable"]


class MirrorError(SampBridgeError):
    """A mirror could not be built, removed or read; the text says what to do."""


class MirrorUnusable(MirrorError):
    """There is no mirror that may answer for this configuration (absent, other, corrupt).

    Attributes
    ----------
    state : str
        ``absent``, ``other`` (another release or service), ``corrupt`` or ``old`` (another
        format version).
    """

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state
