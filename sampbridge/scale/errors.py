"""The scale extra's errors, and the one check that the extra is installed."""

from __future__ import annotations

import importlib

from ..errors import SampBridgeError

__all__ = ["ExtraMissing", "ScaleError", "require"]

#: the import names the extra brings (pyproject.toml, ``[project.optional-dependencies] scale``)
EXTRA_MODULES = ("lsdb", "hats", "hats_import", "dask", "distributed")


class ScaleError(SampBridgeError):
    """An export or an LSDB match could not run; the text is one sentence saying what to do."""


class ExtraMissing(ScaleError):
    """The ``scale`` extra (LSDB, hats-import, Dask) is not installed."""


def require(*modules: str) -> None:
    """Import ``modules`` (default: all of the extra's), or raise :class:`ExtraMissing`.

    Raises
    ------
    ExtraMissing
        One sentence naming the missing package and the install line.
    """
    for name in modules or EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ExtraMissing(f"this needs the scale extra, which is not installed (no module "
                               f"{exc.name or name!r}): run `pip install 'sampbridge[scale]'`"
                               ) from None
