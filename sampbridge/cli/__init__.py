"""Command line: ``sampbridge run | check-config | query ... | service ...``.

The package's rooms: :mod:`.parser` (the options every command shares), :mod:`.commands` (the
registry of command groups, one module each: :mod:`.run`, :mod:`.check_config`, :mod:`.query`,
:mod:`.service`), :mod:`.logs` (the only place logging is set) and :func:`main` here, the
boundary that turns every error into one line and an exit status.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence

from ..config import ConfigError
from ..errors import SampBridgeError
from ..model import RequestError
from .commands import groups
from .logs import SecretFilter, setup_logging
from .parser import build_parser

__all__ = ["main"]

log = logging.getLogger("sampbridge")

# the names this module had before it was a package (tests and scripts import them)
_SecretFilter = SecretFilter
_setup_logging = setup_logging


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success).

    Exit status 2 means the user's to mend (a ``ConfigError``, a ``RequestError``, a path
    that cannot be written), 1 a failure elsewhere (a service, a bug), ``128 + N`` a stop by
    signal N; the error is one line on stderr, ``sampbridge: error: ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.
    """
    args = build_parser(groups()).parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        status: int = args.handler(args)
        return status
    except ConfigError as exc:
        for problem in exc.problems:        # check-config lists every error of the file
            print(f"sampbridge: error: {problem}", file=sys.stderr)
        return 2
    except SampBridgeError as exc:
        print(f"sampbridge: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, RequestError) else 1
    except KeyboardInterrupt:
        print("sampbridge: stopped", file=sys.stderr)
        return 130
    except OSError as exc:
        # a path the user gave (an --out that cannot be written): say which, without errno
        if exc.filename is not None:
            name = re.sub(r"\.part$", "", str(exc.filename))  # the partial file's final name
            print(f"sampbridge: error: cannot write {name}: {exc.strerror or 'failed'}",
                  file=sys.stderr)
            return 2
        print(f"sampbridge: error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug still gets one line, the trace under -v
        log.debug("unexpected failure", exc_info=True)
        print(f"sampbridge: error: unexpected failure ({type(exc).__name__}); run it again "
              "with -v for the details and report them", file=sys.stderr)
        return 1
