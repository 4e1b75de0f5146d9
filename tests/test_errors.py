"""One error base: every kind sampbridge raises on purpose is a SampBridgeError.

Boundaries (the command line, the daemon's call handlers, the query folder) catch the base, so
a kind outside it would surface as an "internal error" or a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import sampbridge
from sampbridge.config import ConfigError
from sampbridge.csc.errors import CSCError
from sampbridge.errors import Cancelled, SampBridgeError
from sampbridge.model import RequestError
from sampbridge.samp.connection import HubUnavailable


@pytest.mark.parametrize("kind", [CSCError, RequestError, ConfigError, HubUnavailable, Cancelled])
def test_every_kind_derives_from_the_one_base(kind: type) -> None:
    assert issubclass(kind, SampBridgeError)


def test_the_kinds_keep_the_builtin_bases_callers_rely_on() -> None:
    assert issubclass(RequestError, ValueError)
    assert issubclass(ConfigError, ValueError)
    assert issubclass(HubUnavailable, RuntimeError)


def test_a_cancellation_is_not_a_service_error() -> None:
    from sampbridge.csc.tap import Cancelled as FromTap

    assert FromTap is Cancelled
    assert not issubclass(Cancelled, CSCError)
    err = Cancelled("stopped before the job ran", url="http://127.0.0.1:1/async/1")
    assert str(err) == "stopped before the job ran"
    assert err.url == "http://127.0.0.1:1/async/1" and err.job_deleted is None


def test_no_module_defines_an_error_of_its_own_outside_the_base() -> None:
    """Every public exception class of sampbridge is a SampBridgeError (``service`` excepted).

    ``sampbridge.service.ServiceError`` is the ``service`` command's own refusal, handled
    within that command; ``config.YAMLRefused`` never leaves ``config``; private ones
    (``folder._Stopped``) are control flow, not errors.
    """
    outside = []
    for info in pkgutil.walk_packages(sampbridge.__path__, "sampbridge."):
        if info.name in ("sampbridge.__main__", "sampbridge.service"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, Exception) \
                    and obj.__module__ == info.name and name != "YAMLRefused" \
                    and not name.startswith("_") \
                    and not issubclass(obj, SampBridgeError):
                outside.append(f"{info.name}.{name}")
    assert not outside
