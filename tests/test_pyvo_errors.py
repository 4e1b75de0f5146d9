"""pyvo's DAL errors and requests' errors become sampbridge's, in one sentence each."""

from __future__ import annotations

import pytest
import requests
from pyvo.dal import SIAService
from pyvo.dal.exceptions import DALFormatError, DALQueryError, DALServiceError

from sampbridge.csc.errors import (
    CSCError,
    QueryError,
    ServiceError,
    ServiceTimeout,
    ServiceUnreachable,
)
from sampbridge.csc.http import make_session
from sampbridge.csc.pyvo_errors import translated

URL = "http://127.0.0.1:9/siap"
VOT_ERROR = (b'<?xml version="1.0"?><VOTABLE xmlns="http://www.ivoa.net/xml/VOTable/v1.3">'
             b'<RESOURCE type="results"><INFO name="QUERY_STATUS" value="ERROR">'
             b"POS is out of range</INFO></RESOURCE></VOTABLE>")


def _raise(exc: BaseException) -> CSCError:
    with pytest.raises(CSCError) as ei, translated("image query (SIAP)", URL):
        raise exc
    return ei.value


def _http_error(status: int, body: bytes) -> requests.HTTPError:
    resp = requests.Response()
    resp.status_code, resp._content, resp.url = status, body, URL
    return requests.HTTPError(f"{status} Client Error", response=resp)


def test_a_query_error_keeps_the_service_words():
    err = _raise(DALQueryError("Field POS: out of range", url=URL))
    assert isinstance(err, QueryError)
    assert str(err).startswith("image query (SIAP) was rejected by the service")
    assert err.service_message == "Field POS: out of range"


def test_a_timeout_under_pyvo_is_a_timeout():
    cause = requests.exceptions.ReadTimeout("read timed out")
    err = _raise(DALServiceError("timed out", cause=cause, url=URL))
    assert isinstance(err, ServiceTimeout)
    assert str(err) == "image query (SIAP): the service did not answer in time"


def test_a_connection_error_is_host_plus_reason():
    cause = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    err = _raise(DALServiceError("cannot connect", cause=cause, url=URL))
    assert isinstance(err, ServiceUnreachable)
    assert str(err) == ("image query (SIAP): cannot reach the service at 127.0.0.1:9: "
                        "the connection was refused (is the service running?)")


@pytest.mark.parametrize("status, kind, verb", [(400, QueryError, "was rejected by the service"),
                                                (500, ServiceError, "failed")])
def test_an_http_error_with_a_votable_body_says_its_text(status, kind, verb):
    cause = _http_error(status, VOT_ERROR)
    err = _raise(DALServiceError(f"{status}", code=status, cause=cause, url=URL))
    assert type(err) is kind
    assert str(err).startswith(f"image query (SIAP) {verb} (HTTP {status})")
    assert err.status == status and err.service_message == "POS is out of range"


def test_any_other_dal_error_is_a_service_error_with_its_text():
    err = _raise(DALFormatError(ValueError("the answer is not a VOTable"), URL))
    assert type(err) is ServiceError and str(err).startswith("image query (SIAP) failed")
    assert "not a VOTable" in (err.service_message or "")


def test_a_cause_given_as_text_is_no_trouble():
    err = _raise(DALFormatError("the answer is not a VOTable", URL))   # pyvo takes any cause
    assert type(err) is ServiceError and str(err).startswith("image query (SIAP) failed")


def test_our_own_errors_and_others_pass_unchanged():
    mine = QueryError("already translated", url=URL)
    assert _raise(mine) is mine
    with pytest.raises(KeyError), translated("x", URL):
        raise KeyError("not a service error")


def test_a_real_pyvo_call_to_a_closed_port_is_one_sentence_after_retries():
    """pyvo's request goes through the session's retrying adapter; urllib3's MaxRetryError
    still ends as the one sentence."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/siap"
    with pytest.raises(ServiceUnreachable) as ei, translated("image query (SIAP)", url):
        SIAService(url, session=make_session(2, 2, retries=1)).search(pos=(1, 2), size=0.1)
    text = str(ei.value)
    assert text == (f"image query (SIAP): cannot reach the service at 127.0.0.1:{port}: "
                    "the connection was refused (is the service running?)"), text
