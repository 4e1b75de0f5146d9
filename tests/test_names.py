"""sampbridge.csc.names.safe_name: one rule for every file name made from outside text."""

from __future__ import annotations

import pytest

from sampbridge.csc.names import safe_name


@pytest.mark.parametrize("text, want", [
    ("acisf01234N001_b_img3.fits", "acisf01234N001_b_img3.fits"),
    ("CSC 2.1 cone 246.79 -24.32", "CSC_2.1_cone_246.79_-24.32"),
    ("../../etc/passwd", "etc_passwd"),
    ("..", "result"),
    ("", "result"),
    ("///", "result"),
    ("_.hidden_", "hidden"),
    ("a\x00b\nc", "a_b_c"),
    ("ρ Oph", "Oph"),
    ("C:\\Windows\\x", "C_Windows_x"),
    ("a+b=c", "a+b_c"),
])
def test_safe_name(text, want):
    assert safe_name(text) == want


@pytest.mark.parametrize("text", ["../x", "/abs/path", "a/../../b", ".", "~user", "a\\..\\b"])
def test_a_name_never_leaves_its_folder(text):
    name = safe_name(text)
    assert "/" not in name and "\\" not in name and name not in (".", "..")
    assert not name.startswith(".") and name


def test_the_limit_cuts_long_names():
    assert safe_name("x" * 200) == "x" * 80
    assert safe_name("y" * 50, limit=10) == "y" * 10


def test_the_siap_client_uses_the_same_rule():
    from sampbridge.csc import siap

    assert siap.safe_name is safe_name
