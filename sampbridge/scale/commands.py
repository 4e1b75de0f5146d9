"""The command line's side of the scale extra: what ``mirror export-hats`` runs.

``sampbridge/cli/mirror.py`` registers the action and calls :func:`export_hats_command`; the
``query match --engine lsdb`` side is :func:`sampbridge.scale.match_file_lsdb`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import ScaleError, require

__all__ = ["export_hats_command"]


def export_hats_command(args: argparse.Namespace) -> int:
    """Export the configured release's mirror as HATS to ``args.dir``; print what was written.

    Raises
    ------
    ExtraMissing
        When the scale extra is not installed.
    ScaleError
        When there is no usable mirror, or the export fails.
    """
    require()
    from ..config import load_config
    from ..engine_mirror import mirror_root
    from ..mirror import MirrorUnusable, open_mirror
    from .export import DEFAULT_MARGIN_ARCSEC, export_hats

    cfg = load_config(args.config)
    try:
        m = open_mirror(mirror_root(cfg), cfg["release"],
                        {"tap": cfg["services.tap"], "cone": cfg["services.cone"]})
    except MirrorUnusable as exc:
        raise ScaleError(f"nothing to export: {exc}") from None
    try:
        out = Path(args.dir).expanduser()
        info = export_hats(m, out, margin_arcsec=args.margin or DEFAULT_MARGIN_ARCSEC,
                           scheduler=args.dask_scheduler)
    finally:
        m.close()
    print(f"HATS export of the CSC {info['release']} mirror: {info['rows']:,} rows in "
          f"{info['partitions']} partitions, margin {info['margin_arcsec']:g}\", in "
          f"{info['seconds']:.1f} s at {out}")
    return 0
