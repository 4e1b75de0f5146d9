"""sampbridge.daemon.params: one sentence per kind of bad value, and short descriptions."""

from __future__ import annotations

import pytest

from sampbridge.csc.errors import CSCError
from sampbridge.daemon.params import (
    clip,
    debug_text,
    describe,
    error_text,
    row_number,
    text_param,
)
from sampbridge.errors import Cancelled
from sampbridge.model import ConeRequest, RequestError, SiapRequest, TapRequest


@pytest.mark.parametrize(("value", "expected"), [("12", 12), (" 3 ", 3), (7, 7)])
def test_a_row_number_is_read_from_text_or_a_number(value, expected) -> None:
    assert row_number(value) == expected


@pytest.mark.parametrize(("value", "sentence"), [
    ("x", "'row' must be a row number, not 'x'"),
    (2.5, "'row' must be a row number, not 2.5"),
    ([1], "'row' must be a row number, not a list"),
    ({"a": 1}, "'row' must be a row number, not a map"),
])
def test_a_bad_row_number_is_one_sentence(value, sentence) -> None:
    with pytest.raises(RequestError) as err:
        row_number(value)
    assert str(err.value) == sentence


def test_text_params_refuse_what_is_not_text() -> None:
    assert text_param({"url": "file:///t.vot"}, "url") == "file:///t.vot"
    assert text_param({}, "url") is None
    with pytest.raises(RequestError, match="'url' must be text, not a list"):
        text_param({"url": ["a"]}, "url")


def test_error_texts_keep_sampbridges_sentence_and_mark_others_internal() -> None:
    assert error_text(RequestError("'ra' is missing")) == "'ra' is missing"
    assert error_text(KeyError("k")).startswith("internal error (KeyError")


def test_the_debug_text_names_a_failed_services_url_and_status() -> None:
    exc = CSCError("the service failed", url="http://x/tap", status=503)
    assert debug_text(exc) == "url=http://x/tap http=503"
    assert debug_text(Cancelled("stopped")) is None
    assert debug_text(ValueError("v")) is None


def test_requests_are_described_in_a_few_words() -> None:
    assert describe(ConeRequest(83.6331, 22.0145, 30 / 3600, 2)) == 'cone 83.63310 +22.01450 r=30"'
    assert describe(SiapRequest(1.0, -2.0, 0.1)) == "images 1.00000 -2.00000 size=0.1"
    tap = describe(TapRequest("SELECT   TOP 5\n name FROM csc21.master_source " + "x" * 80,
                              None, None))
    assert tap.startswith("TAP 'SELECT TOP 5 name FROM") and len(tap) <= 66
    assert clip("a" * 100, 10) == "aaaaaaa..."
