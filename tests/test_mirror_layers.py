"""sampbridge.mirror sits beside the engine: it imports the CSC layer, errors and _astropy only.

(The contract for pyproject.toml is in /work/notes/handoff/H5.md for the contracts' owner;
until it is there, this test keeps the rule.)
"""

from __future__ import annotations

import grimp

ALLOWED = ("sampbridge.mirror", "sampbridge.csc", "sampbridge.errors", "sampbridge._astropy")


def test_mirror_imports_only_csc_errors_and_astropy_lock():
    graph = grimp.build_graph("sampbridge")
    leaks = []
    for module in graph.find_descendants("sampbridge.mirror") | {"sampbridge.mirror"}:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported.startswith("sampbridge") and not imported.startswith(ALLOWED):
                leaks.append(f"{module} -> {imported}")
    assert not leaks, leaks


def test_nothing_below_imports_the_mirror():
    graph = grimp.build_graph("sampbridge")
    for low in ("sampbridge.csc", "sampbridge.samp", "sampbridge.model", "sampbridge.errors"):
        assert not graph.chain_exists(importer=low, imported="sampbridge.mirror",
                                      as_packages=True), low
