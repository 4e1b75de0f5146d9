"""Past one machine (``pip install 'sampbridge[scale]'``): the mirror as HATS, matches on Dask.

:func:`export_hats` writes the local mirror as a HATS catalogue (with ``hats-import``);
:func:`match_lsdb` matches positions against that catalogue with LSDB on a Dask cluster (a
local one, or the scheduler at an address) and gives exactly the pairs of the in-process
matcher :func:`sampbridge.mirror.match`; :func:`match_file_lsdb` is ``sampbridge query match
--engine lsdb``.  LSDB, HATS and Dask are imported only inside these functions, so the base
install imports this package without them; a missing extra is one :class:`ExtraMissing`
sentence.  See docs/mirror.md, "Past one machine".
"""

from .errors import ExtraMissing, ScaleError, require
from .export import DEFAULT_MARGIN_ARCSEC, default_hats_dir, ensure_hats, export_hats, read_export
from .files import match_file_lsdb
from .lsdb_match import match_lsdb

__all__ = ["DEFAULT_MARGIN_ARCSEC", "ExtraMissing", "ScaleError", "default_hats_dir",
           "ensure_hats", "export_hats", "match_file_lsdb", "match_lsdb", "read_export",
           "require"]
