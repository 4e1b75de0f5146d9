"""A local mirror of CSC ``master_source``: build it, open it, answer cones and matches from it.

This package sits beside the engine: it imports the CSC layer (:mod:`sampbridge.csc`),
:mod:`sampbridge.errors` and :mod:`sampbridge._astropy`, and takes explicit parameters (service
clients, release, columns, paths, parallelism, a progress callback), never a ``Config``.
See docs/mirror.md.
"""

from .builder import ELLIPSE, build
from .errors import MirrorError, MirrorUnusable
from .query import cone_rows, cone_votable, match, table, write_cone
from .status import open_mirror, status
from .store import Mirror, default_root, release_dir, remove

__all__ = ["ELLIPSE", "Mirror", "MirrorError", "MirrorUnusable", "build", "cone_rows",
           "cone_votable", "default_root", "match", "open_mirror", "release_dir", "remove",
           "status", "table", "write_cone"]
