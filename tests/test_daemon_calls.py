"""sampbridge.daemon.calls: the reply a finished query gets."""

from __future__ import annotations

from pathlib import Path

from sampbridge.csc.siap import ImageInfo
from sampbridge.daemon.calls import result_reply
from sampbridge.engine import ImageResult, MatchResult, TableResult


def test_a_table_reply_says_where_it_is_and_who_took_it(tmp_path: Path) -> None:
    res = TableResult(tmp_path / "c.vot", "cone-1", "CSC cone", 12, 0.1, "cone", True)
    reply = result_reply(res, ["topcat"])
    assert reply == {"status": "done", "url": res.url, "table-id": "cone-1", "name": "CSC cone",
                     "rows": 12, "overflow": True, "sent-to": ["topcat"]}


def test_a_match_reply_counts_its_rows(tmp_path: Path) -> None:
    res = MatchResult(tmp_path / "m.vot", "match-1", "t x CSC", 5, 1.0, "match", False, "",
                      input_rows=4, no_position=1, unmatched=2, strategy="cone")
    reply = result_reply(res, [])
    assert isinstance(reply, dict)
    assert (reply["input-rows"], reply["no-position"], reply["unmatched"],
            reply["strategy"]) == (4, 1, 2, "cone")


def test_images_reply_their_files_and_no_image_is_a_sentence(tmp_path: Path) -> None:
    img = ImageInfo("http://x/i.fits", "i", "image/fits", 1.0, 2.0, "broad", 10,
                    path=tmp_path / "i.fits")
    reply = result_reply(ImageResult([img], 3, 0.2, "images"), ["ds9"])
    assert isinstance(reply, dict) and reply["urls"] == [img.path.resolve().as_uri()]
    none = result_reply(ImageResult([], 2, 0.2, "images", ["too big"]), [])
    assert none == "no image found at that position (2 found, 1 over the size cap)"


