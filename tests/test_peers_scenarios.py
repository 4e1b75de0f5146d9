"""Real-peer user stories: ``sampbridge run`` between the real TOPCAT, DS9, Aladin and STILTS.

Each story runs the daemon as a real subprocess (``python -m sampbridge run --config FILE``) on a
private SAMP world (tests/peers/harness.py: Xvfb, a JSAMP or pyvo hub, the real peers), against
the local CSC 2.1 mimic on 127.0.0.1:18080, and checks what a user would see: the table in
TOPCAT (its rows equal a direct cone query to the same server), the image in DS9, the match
table, the file dropped in the watched folder. The daemon is stopped with SIGTERM and must exit 0;
its log is kept as ``sampbridge.log`` in the test's tmp dir.

Needs the peers (``sudo bash tests/peers/install.sh``) and the mimic
(``sudo bash tests/vo_server/setup.sh``). Screenshots for docs/screenshots.md::

    SAMPBRIDGE_SCREENSHOTS=1 python -m pytest tests/test_peers_scenarios.py -k screenshot
"""

from __future__ import annotations

import contextlib
import html
import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from astropy.io import fits
from astropy.io.votable import parse_single_table
from astropy.table import Table
from astropy.wcs import WCS
from pyvo.dal import SCSService, SIAService

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import wait_for  # noqa: E402
from peers.harness import (  # noqa: E402
    PeerError,
    PeerStack,
    fetch_url,
    find_client_id,
    read_catinfo,
    require_peers,
)

pytestmark = [
    pytest.mark.peers,
    pytest.mark.server,
    # the mimic's VOTables use the unit 'erg', which VOUnit deprecates
    pytest.mark.filterwarnings("ignore::astropy.units.UnitsWarning"),
]

HUBS = ["jsamp", "python"]
REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "tests" / "data" / "cxc_guide"
DOC_IMAGES = REPO / "docs" / "images"

RHO = (246.7925, -24.32027)  # rho Oph core; a CSC source of the mimic sits exactly here
INSIDE = (246.7860, -24.3150)  # 30" from the centre of the rho Oph b-band image, inside it
BLANK = (246.75, -24.5)  # no mimic source within 3"
CONE_RADIUS = 0.05  # cone.radius (default) in degrees
MATCH_RADIUS = 3.0  # match.radius (default) in arcsec

#: Delivery failures in the daemon log ("table.load.votable to topcat failed: ...").
FAILED_DELIVERY = re.compile(
    r"WARNING +(?:(?:table\.load\.votable|image\.load\.fits) to \S+ failed|reply to \S+ failed)"
    r": .*"
)


class DeliveryRefused(AssertionError):
    """sampbridge logged that a peer or the hub refused one of its messages."""


#: The match tables run on both hubs. The JSAMP hub checks that SAMP strings are ASCII (SAMP 1.3
#: section 3.3); the name '<name> \u00d7 CSC 2.1' is therefore sent as '<name> x CSC 2.1'.
HUBS_MATCH = ["jsamp", "python"]

_counter = itertools.count(1)


# ----------------------------------------------------------------------------- the daemon
def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        d = out
        for p in parents:
            d = d.setdefault(p, {})
        d[leaf] = value
    return out


class SampBridge:
    """``python -m sampbridge run --config FILE`` on a stack's hub (``env=stack.env``)."""

    def __init__(self, stack: PeerStack, workdir: Path, vo: str, settings: dict[str, Any]):
        self.stack = stack
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.results = (workdir / "results").resolve()
        self.config = workdir / "sampbridge.yaml"
        self.log_path = workdir / "sampbridge.log"
        values: dict[str, Any] = {
            "services.cone": f"{vo}/csc21scs/coneSearch",
            "services.siap": f"{vo}/csc21siap/queryImages",
            "services.tap": f"{vo}/csc21tap",
            "results.dir": str(self.results),
            "http.connect_timeout": 5.0,
            "http.read_timeout": 30.0,
            "hub.mode": "connect",
            "hub.ping_interval": 0.5,
            "pointat.quiet": 0.2,
            "folder.enabled": False,
        }
        values.update(settings)
        self.config.write_text(yaml.safe_dump(_nested(values), sort_keys=False))
        self.proc: subprocess.Popen | None = None
        self.id: str | None = None
        self.returncode: int | None = None

    # -- process ------------------------------------------------------------------------
    def start(self, register: bool = True, timeout: float = 30.0) -> SampBridge:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sampbridge", "run", "--config", str(self.config)],
                env=self.stack.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        if register:
            self.wait_registered(timeout)
        return self

    def alive(self) -> None:
        """Raise (with the log) if the daemon has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"sampbridge exited with {self.proc.returncode}\n{self.tail()}")

    def wait_registered(self, timeout: float = 30.0) -> str:
        """Id of the newest live client named sampbridge on the hub, once it is subscribed."""
        try:
            self.id = find_client_id(
                self.stack.client,
                "sampbridge",
                timeout=timeout,
                need_mtypes=("coord.pointAt.sky", "table.load.votable"),
                alive=self.alive,
            )
        except PeerError as e:
            raise AssertionError(f"{e}\n{self.tail()}") from None
        return self.id

    def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM; assert exit status 0; return the counters of its last log line."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                raise AssertionError(
                    f"sampbridge ignored SIGTERM for {timeout}s\n{self.tail()}"
                ) from None
        self.returncode = self.proc.returncode
        assert self.returncode == 0, f"sampbridge exited with {self.returncode}\n{self.tail()}"
        m = re.findall(r"stopped \(([^)]*)\)", self.log())
        assert m, f"no 'stopped (...)' line\n{self.tail()}"
        return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", m[-1])}

    # -- log ----------------------------------------------------------------------------
    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 30) -> str:
        text = "\n".join(self.log().splitlines()[-lines:])
        return f"--- tail of {self.log_path} ---\n{text}"

    def check(self) -> None:
        """Fail at once if the daemon died or logged a refused delivery."""
        self.alive()
        m = FAILED_DELIVERY.search(self.log())
        if m:
            raise DeliveryRefused(f"sampbridge: {m.group(0)}\n{self.tail()}")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> list[re.Match]:
        """Wait until ``pattern`` (a regex) matched ``count`` log lines; return the matches."""
        rx = re.compile(pattern)

        def found() -> list[re.Match] | None:
            self.alive()
            ms = list(rx.finditer(self.log()))
            return ms if len(ms) >= count else None

        try:
            return wait_for(found, timeout, 0.05, what=f"{count} x /{pattern}/ in the log")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.tail()}") from None


@pytest.fixture
def bridge(stack: PeerStack, vo_server: str, tmp_path: Path) -> Iterator[Callable[..., SampBridge]]:
    """Factory of daemons on the module's stack; each is stopped (and must exit 0) afterwards."""
    made: list[SampBridge] = []

    def make(settings: dict[str, Any] | None = None, start: bool = True) -> SampBridge:
        b = SampBridge(stack, tmp_path / f"sampbridge-{len(made) + 1}", vo_server,
                       dict(settings or {}))
        made.append(b)
        return b.start() if start else b

    yield make
    errors = []
    for b in made:
        if b.proc is not None and b.returncode is None:
            try:
                b.stop()
            except AssertionError as e:
                errors.append(str(e))
    if errors:
        pytest.fail("\n".join(errors), pytrace=False)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start helper processes (STILTS); any still running at the end is killed."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "ab") as log:
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, cwd=tmp_path,
                                 start_new_session=True)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


# ----------------------------------------------------------------------------- the peers
@pytest.fixture(scope="module", params=HUBS)
def stack(request, tmp_path_factory, vo_server: str) -> Iterator[PeerStack]:
    """One private SAMP world per hub: Xvfb, the hub, TOPCAT and DS9 (Aladin on demand)."""
    hub = request.param
    require_peers("topcat", "ds9", "aladin", "xdotool", "screenshot", hub=hub)
    st = PeerStack(tmp_path_factory.mktemp(f"scenarios-{hub}"), hub=hub)
    st.start()
    try:
        st.start_topcat()
        st.start_ds9()
    except BaseException:
        st.stop()
        raise
    yield st
    st.stop()


def fresh_topcat(st: PeerStack) -> None:
    """Restart TOPCAT before a test that clicks in it: no windows left by earlier tests.

    Call it after sampbridge has registered, so that TOPCAT finds sampbridge's subscriptions
    when it connects. With the opposite order TOPCAT depends on the hub's events about
    sampbridge, and once, on a 2-core machine loaded with 4 busy processes (JSAMP hub),
    TOPCAT's Broadcast reached DS9 and Aladin but not sampbridge, on two clicks 10 s apart.
    """
    st.stop_peer("topcat")
    st.start_topcat()


def ensure_aladin(st: PeerStack, image: Path) -> str:
    """Start Aladin if needed, with an image loaded (without one, a position sent to Aladin
    makes it look for the DSS2 HiPS, which fails offline)."""
    if not st.is_running("aladin"):
        st.start_aladin()
        st.call_ok("aladin", "image.load.fits", {"url": image.as_uri(), "name": "rho Oph"})
    return st.peer_id("aladin")


@pytest.fixture(scope="session")
def mimic_image(vo_server: str, tmp_path_factory) -> Path:
    """The mimic's b-band image nearest rho Oph, found through SIAP and downloaded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = SIAService(f"{vo_server}/csc21siap/queryImages").search(pos=RHO, size=0.2).to_table()
    keep = [str(b) == "b" and str(m) == "image/fits"
            for b, m in zip(t["band"], t["mime"], strict=True)]
    t = t[keep]
    best = min(t, key=lambda r: _sep_arcsec(RHO, (r["centerAlpha"], r["centerDelta"])))
    url = str(best["accref"])
    path = tmp_path_factory.mktemp("mimic-image") / url.rsplit("/", 1)[-1]
    path.write_bytes(fetch_url(url))
    assert path.read_bytes()[:9] == b"SIMPLE  ="
    return path


# ----------------------------------------------------------------------------- helpers
def _sep_arcsec(a: tuple[float, float], b: tuple[float, float]) -> float:
    r1, d1, r2, d2 = map(math.radians, (*a, *b))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0


def direct_cone(vo: str, ra: float, dec: float, sr: float = CONE_RADIUS) -> Table:
    """The same cone asked of the mimic directly (pyvo SCS, VERB=2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SCSService(f"{vo}/csc21scs/coneSearch").search((ra, dec), sr,
                                                               verbosity=2).to_table()


def cone_names(vo: str, ra: float, dec: float, sr: float = CONE_RADIUS) -> set[str]:
    return {str(n) for n in direct_cone(vo, ra, dec, sr)["name"]}


def cone_title(ra: float, dec: float, radius: float = CONE_RADIUS) -> str:
    """The name sampbridge gives a cone table (docs/user-guide.md)."""
    arcmin = radius * 60
    label = f"{arcmin:.4g}'" if arcmin >= 1 else f'{arcmin * 60:.4g}"'
    return f"CSC 2.1 cone {ra:.5f} {dec:.5f} r={label}"


def match_title_re(name: str) -> str:
    # docs/tables.md: '<input name> × CSC 2.1' in the VOTable, 'x' in the SAMP name
    return rf"^{re.escape(name)} [\u00d7x] CSC 2\.1$"


def topcat_names(st: PeerStack, index: int) -> set[str]:
    return {r["name"] for r in st.topcat_table_rows(index)}


class TopcatTables:
    """Waits for tables to arrive in TOPCAT and reads their names (cached by index)."""

    def __init__(self, st: PeerStack, daemon: SampBridge | None = None,
                 before: int | None = None):
        self.st = st
        self.daemon = daemon
        self.before = st.topcat_table_count() if before is None else before
        self._names: dict[int, str] = {}

    def count(self) -> int:
        return self.st.topcat_table_count()

    def name(self, index: int) -> str:
        if index not in self._names:
            self._names[index] = str(self.st.topcat_table(index).meta.get("name", ""))
        return self._names[index]

    def wait(self, pattern: str, timeout: float = 30.0) -> int:
        """Index of the first table added since creation whose name matches ``pattern``."""
        rx = re.compile(pattern)
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            if self.daemon is not None:
                self.daemon.check()
            try:
                n = self.st.topcat_table_count(at_least=self.before + 1, timeout=0.5)
                seen = [self.name(i) for i in range(self.before + 1, n + 1)]
            except Exception as e:  # noqa: BLE001 - one lost reply: ask again
                # seen twice with the pyvo hub before commit 7d76d10 (its callAndWait dropped
                # a reply that came back at once; the harness's python hub is now the fixed
                # sampbridge.samp.hub.Hub): asking again is harmless, and it warns
                warnings.warn(f"TOPCAT table.get.stil failed, asking again: {e!r}",
                              stacklevel=2)
                if time.monotonic() > deadline:
                    raise
                continue
            for i, name in enumerate(seen, start=self.before + 1):
                if rx.search(name):
                    return i
            if time.monotonic() > deadline:
                tail = self.daemon.tail() if self.daemon is not None else ""
                shot = ""
                with contextlib.suppress(Exception):
                    where = self.daemon.dir if self.daemon is not None else self.st.logs
                    shot = f"; screen: {self.st.screenshot(where / 'no-table.png')}"
                raise AssertionError(
                    f"no table /{pattern}/ arrived in TOPCAT within {timeout}s; new tables: "
                    f"{seen}{shot}\n{tail}"
                )
            time.sleep(0.1)


def wait_current(st: PeerStack, name: str, timeout: float = 20.0) -> None:
    """Wait until TOPCAT's current table (the one its GUI buttons act on) is ``name``."""

    def current() -> bool:
        try:
            return str(st.topcat_table(None, timeout=1).meta.get("name", "")) == name
        except Exception:  # noqa: BLE001 - no table yet, or a reply lost: ask again
            return False

    wait_for(current, timeout, 0.2, what=f"TOPCAT's current table to be {name!r}")


def topcat_broadcast(st: PeerStack, daemon: SampBridge, name: str) -> None:
    """Click TOPCAT's *Broadcast table* for its current table ``name``; wait for sampbridge."""
    wait_current(st, name)
    st.topcat_broadcast_table()
    try:
        daemon.wait_log(rf"table\.load\.votable from topcat: match '{re.escape(name)}'")
    except AssertionError as e:
        shot = st.screenshot(daemon.dir / "broadcast-not-received.png")
        raise AssertionError(f"{e}\nscreen after the click: {shot}") from None


def wait_ds9_file(st: PeerStack, folder: Path, timeout: float = 20.0) -> Path:
    """Wait until DS9 shows a file from ``folder`` (sampbridge's results dir)."""

    def shown() -> Path | None:
        f = st.ds9_get("file", timeout=10)
        return Path(f) if f and Path(f).resolve().parent == folder.resolve() else None

    return wait_for(shown, timeout, 0.1, what=f"DS9 to show an image from {folder}")


def ds9_catalog_list(st: PeerStack, tmp: Path) -> list[tuple[str, int, str]]:
    """DS9's catalogs as (catvar, rows, title), like ``st.ds9_catalogs()``, but usable while
    DS9 is busy building its catalog window: the XPA ``source`` then sometimes fails with a
    Tcl error from that window (e.g. 'no "active" cell in table') although the listing was
    written. A marker written after the listing tells a complete one; else [] (ask again)."""
    k = next(_counter)
    out, done = tmp / f"ds9-catalogs-{k}.txt", tmp / f"ds9-catalogs-{k}.done"
    try:
        st.ds9_source_tcl(f"SampBridgeTestCatInfo {{{out}}}\nclose [open {{{done}}} w]")
    except PeerError:
        if not done.exists():
            return []
    return read_catinfo(out)


def image_centre(path: Path) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdr = fits.getheader(path)
        ra, dec = WCS(hdr).celestial.all_pix2world(
            [[(hdr["NAXIS1"] - 1) / 2, (hdr["NAXIS2"] - 1) / 2]], 0)[0]
    return float(ra), float(dec)


def write_positions(path: Path, rows: list[tuple[str, float, float]]) -> Path:
    """A VOTable of (id, ra, dec) rows with the usual UCDs."""
    from astropy.io.votable import from_table

    t = Table(rows=rows, names=["id", "ra", "dec"], dtype=[str, float, float])
    t["ra"].unit = t["dec"].unit = "deg"
    vot = from_table(t)
    fields = vot.get_first_table().fields
    fields[1].ucd, fields[2].ucd = "pos.eq.ra;meta.main", "pos.eq.dec;meta.main"
    vot.to_xml(str(path))
    return path


@pytest.fixture(scope="session")
def sources(vo_server: str) -> list[tuple[str, float, float]]:
    """Three mimic sources around rho Oph (id, ra, dec), 10"-3' from the centre."""
    t = direct_cone(vo_server, *RHO)
    t.sort("_r")
    picked = [t[i] for i in (10, 40, 80)]
    return [(str(r["name"]), float(r["ra"]), float(r["dec"])) for r in picked]


def match_input(sources: list[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """Input rows for a match: the sources moved by 0.5" in Dec, and one blank position."""
    rows = [(f"src{i + 1}", ra, dec + 0.5 / 3600) for i, (_, ra, dec) in enumerate(sources)]
    return rows + [("blank", *BLANK)]


def expected_matches(vo: str, rows: list[tuple[str, float, float]]) -> dict[str, str]:
    """{input id: nearest CSC source within MATCH_RADIUS}, from direct cone queries."""
    out = {}
    for ident, ra, dec in rows:
        t = direct_cone(vo, ra, dec, MATCH_RADIUS / 3600)
        if len(t):
            t.sort("_r")
            out[ident] = str(t["name"][0])
    return out


def check_match_table(st: PeerStack, index: int, want: dict[str, str]) -> None:
    rows = st.topcat_table_rows(index)
    got = {r["id"]: r["name_csc"] for r in rows}
    assert got == want, f"match rows {got} != direct cones {want}"
    assert len(rows) == len(want)
    assert all(float(r["sep_arcsec"]) <= MATCH_RADIUS for r in rows)


# ============================================================================= 1. DS9 click
def ds9_click_to_topcat(stack, b, mimic_image, vo_server):  # noqa: ANN001
    """Scenario 1: DS9 shows an image and pans to a source; return (ra, dec, TOPCAT tables,
    CSC names in the new table), having checked them against a direct cone."""
    stack.call_ok("ds9", "image.load.fits", {"url": mimic_image.as_uri(), "name": "rho Oph"})
    tables = TopcatTables(stack, b)
    with stack.connect_client("ds9-watcher", ["coord.pointAt.sky"]) as rec:
        stack.ds9_send_point_at(*INSIDE)
        sent = rec.wait_for("coord.pointAt.sky", sender=stack.peer_id("ds9"))
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    got = topcat_names(stack, index)
    assert got == cone_names(vo_server, ra, dec)
    return ra, dec, tables, got


def test_ds9_click_gives_the_cone_table_in_topcat(stack, bridge, mimic_image, vo_server):
    b = bridge({"images.enabled": False})
    ra, dec, tables, got = ds9_click_to_topcat(stack, b, mimic_image, vo_server)
    assert _sep_arcsec((ra, dec), INSIDE) < 0.1 and len(got) > 10
    b.wait_log(rf"coord\.pointAt\.sky from SAOImageDS9: {ra:.5f} {dec:+.5f}\n")
    b.wait_log(rf"cone {ra:.5f} {dec:+.5f} r=0\.05 VERB=2 for SAOImageDS9: {len(got)} rows .*"
               r"-> topcat")
    stats = b.stop()
    assert stats["queries"] == 1 and stats["delivered"] == 1 and stats["errors"] == 0
    assert tables.count() == tables.before + 1


# ============================================================================= 2. Aladin reticle
def test_aladin_reticle_gives_table_in_topcat_and_image_in_ds9(stack, bridge, mimic_image,
                                                               vo_server):
    aladin = ensure_aladin(stack, mimic_image)
    b = bridge()  # images on (the default)
    tables = TopcatTables(stack, b)
    with stack.connect_client("aladin-watcher", ["coord.pointAt.sky"]) as rec:
        stack.aladin_send_point_at(*RHO)
        sent = rec.wait_for("coord.pointAt.sky", sender=aladin)
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    assert _sep_arcsec((ra, dec), RHO) < 0.1

    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    got = topcat_names(stack, index)
    assert got == cone_names(vo_server, ra, dec) and len(got) > 10

    shown = wait_ds9_file(stack, b.results)
    assert shown.read_bytes()[:9] == b"SIMPLE  ="
    (line,) = b.wait_log(r"images .* for Aladin: \d+ found, 1 downloaded in \d+ ms -> (.*)\n")
    assert "SAOImageDS9" in line.group(1)
    b.check()
    stats = b.stop()
    assert stats["queries"] == 1 and stats["errors"] == 0


def aladin_catalogs(st: PeerStack, tmp: Path) -> dict[str, int]:
    """Aladin's catalog planes as {label: rows}, read from a ``backup`` of its stack.

    Aladin has no query MType; its ``backup`` script command writes the whole stack, with each
    catalog's rows as tab-separated lines in a CDATA block.
    """
    out = tmp / f"aladin-stack-{time.monotonic_ns()}.aj"
    st.aladin_script(f"backup {out}")
    text = wait_for(lambda: out.is_file() and "</ALADINJAVA>" in (t := _read(out)) and t, 20,
                    what="Aladin's stack backup")
    planes = {}
    for m in re.finditer(r'<PLANE\s[^>]*?type="Catalog"[^>]*?label="([^"]*)".*?</PLANE>', text,
                         re.S):
        data = re.search(r"<!\[CDATA\[(.*?)\]\]>", m.group(0), re.S)
        planes[html.unescape(m.group(1))] = \
            sum(1 for line in (data.group(1) if data else "").splitlines() if line.strip())
    return planes


def test_aladin_listed_in_send_tables_to_gets_the_cone_table(stack, bridge, mimic_image,
                                                             vo_server, tmp_path):
    """Aladin as a table recipient: the cone's sources become a catalog plane over the image.

    Aladin 12.001 never answers its first table.load.votable call (it loads the table all
    the same): the delivery must not wait for it, and TOPCAT gets its table at once.
    """
    aladin = ensure_aladin(stack, mimic_image)
    b = bridge({"images.enabled": False, "send_tables_to": ["topcat", "aladin"]})
    tables = TopcatTables(stack, b)
    with stack.connect_client("aladin-watcher", ["coord.pointAt.sky"]) as rec:
        stack.aladin_send_point_at(*RHO)
        t0 = time.monotonic()
        sent = rec.wait_for("coord.pointAt.sky", sender=aladin)
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    title = cone_title(ra, dec)
    index = tables.wait("^" + re.escape(title) + "$")
    n = len(cone_names(vo_server, ra, dec))
    assert len(topcat_names(stack, index)) == n > 10
    (line,) = b.wait_log(r" for Aladin: (\d+) rows in \d+ ms -> (.*)\n")
    # hub.send_wait (5 s), not hub.call_timeout (20 s), bounds the wait for a silent recipient
    assert time.monotonic() - t0 < 15, "the delivery waited for Aladin's reply"
    assert int(line.group(1)) == n
    assert "topcat" in line.group(2) and "Aladin" in line.group(2), line.group(0)
    got = wait_for(lambda: (c := aladin_catalogs(stack, tmp_path)).get(title) and c, 30, 0.5,
                   what=f"Aladin to show the plane '{title}'")
    assert got[title] == n
    stats = b.stop()
    assert stats["queries"] == 1 and stats["delivered"] == 1


# ============================================================================= 3. TOPCAT row
def test_topcat_row_click_gives_a_new_cone_table(stack, bridge, sources, vo_server, tmp_path):
    b = bridge({"images.enabled": False})
    fresh_topcat(stack)
    vot = write_positions(tmp_path / "my_sources.vot", sources)
    r = stack.send_votable("topcat", vot, table_id="scenario3-sources", name="my sources")
    assert r["samp.status"] == "samp.ok", r
    TopcatTables(stack, b, before=0).wait("^my sources$")  # TOPCAT was (re)started above
    tables = TopcatTables(stack, b)

    wait_current(stack, "my sources")
    stack.topcat_enable_activation(sky=True, row=False)
    with stack.connect_client("topcat-watcher", ["coord.pointAt.sky"]) as rec:
        stack.topcat_click_row(2)
        sent = rec.wait_for("coord.pointAt.sky", sender=stack.peer_id("topcat"))
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    assert _sep_arcsec((ra, dec), sources[1][1:]) < 0.01

    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    got = topcat_names(stack, index)
    assert got == cone_names(vo_server, ra, dec)
    assert sources[1][0] in got
    b.wait_log(rf"coord\.pointAt\.sky from topcat: {ra:.5f} {dec:+.5f}\n")
    stats = b.stop()
    assert stats["queries"] == 1 and stats["errors"] == 0


# ============================================================================= 4. custom MType
def test_custom_tap_mtype_runs_a_cxc_guide_query(stack, bridge, vo_server):
    b = bridge({"images.enabled": False})
    tables = TopcatTables(stack, b)
    adql = (GUIDE / "1_master_sources.adql").read_text()
    # the harness's pyvo client stands in for TOPCAT's "Send Custom SAMP Message"
    resp = stack.call(b.id, "x-sampbridge.query.tap", {"adql": adql, "name": "guide query 1"},
                      timeout=60)
    assert resp["samp.status"] == "samp.ok", resp
    res = resp["samp.result"]
    assert res["status"] == "done" and res["rows"] == "1000", res
    assert res["table-id"].startswith("sampbridge-tap-")
    assert res["url"].startswith("file:") and res["sent-to"] == ["topcat"]
    result_file = b.results / res["url"].rsplit("/", 1)[-1]
    assert result_file.is_file()

    index = tables.wait("^guide query 1$")
    rows = stack.topcat_table_rows(index)
    assert len(rows) == 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [str(n) for n in parse_single_table(str(result_file)).to_table()["name"]]
    assert [r["name"] for r in rows] == want  # ORDER BY name, kept by TOPCAT
    stats = b.stop()
    assert stats["queries"] == 1 and stats["errors"] == 0


# ============================================================================= 5. echo loop
def ds9_pan_broadcast(st: PeerStack, rec: Any, ds9: str, target: tuple[float, float],
                      tries: int = 3) -> Any:
    """Pan DS9 to ``target`` and return the coord.pointAt.sky it broadcasts.

    DS9 skips the broadcast while it is handling a SAMP message (``samp(lock)``) or before its
    list of image and table clients is refreshed (1 s after a client event); twice in about
    twenty full runs it sent nothing, so the pan is repeated (an extra echo is harmless).
    """
    for attempt in range(tries):
        rec.clear()
        st.ds9_send_point_at(*target, via="pan")
        try:
            return rec.wait_for("coord.pointAt.sky", sender=ds9,
                                timeout=10 if attempt == tries - 1 else 5)
        except TimeoutError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def test_ds9_echo_after_an_image_load_starts_no_query(stack, bridge, mimic_image):
    # DS9 sends pointAt on a pan only if some client takes images and some takes tables
    ensure_aladin(stack, mimic_image)
    # a long echo window, so that a slow machine still pans within it
    b = bridge({"echo.window": 20.0})
    tables = TopcatTables(stack, b)
    ds9 = stack.peer_id("ds9")
    with stack.connect_client("echo-watcher", ["coord.pointAt.sky"]) as rec:
        stack.ds9_send_point_at(*INSIDE)
        click = rec.wait_for("coord.pointAt.sky", sender=ds9)
        click_pos = (float(click.params["ra"]), float(click.params["dec"]))
        tables.wait("^" + re.escape(cone_title(*click_pos)) + "$")
        shown = wait_ds9_file(stack, b.results)
        b.wait_log(r"images .* -> .*SAOImageDS9")
        centre = image_centre(shown)
        assert _sep_arcsec(centre, click_pos) > 10  # two distinct echo positions

        # DS9's own broadcasts: pan to the clicked position, then to the image centre
        for target in (click_pos, centre):
            m = ds9_pan_broadcast(stack, rec, ds9, target)
            assert _sep_arcsec((float(m.params["ra"]), float(m.params["dec"])), target) < 1
        b.wait_log(r"coord\.pointAt\.sky from SAOImageDS9: \S+ \S+ ignored \(echo of a "
                   r"delivered result\)", count=2)
    stats = b.stop()
    assert stats["queries"] == 1 and stats["echoes"] >= 2, stats
    assert tables.count() == tables.before + 1


# ============================================================================= 7. tables
@pytest.mark.parametrize("stack", HUBS_MATCH, indirect=True)
def test_stilts_table_is_matched_into_topcat(stack, bridge, background, sources, vo_server,
                                             tmp_path):
    b = bridge({"images.enabled": False})
    rows = match_input(sources)
    want = expected_matches(vo_server, rows)
    assert len(want) == 3 and "blank" not in want
    vot = write_positions(tmp_path / "positions.vot", rows)
    tables = TopcatTables(stack, b)
    # sent to sampbridge only: on a loaded machine STILTS's little HTTP server sometimes fails
    # one of several concurrent fetches of a broadcast table ("WARNING: Httpd error" and an
    # empty 200 response), which would fail this test for STILTS's sake
    stilts = background(["stilts", *stack.jvm_args, "tpipe", f"in={vot}", "omode=samp",
                         "format=votable", "client=sampbridge"], stack.env, "stilts")
    index = tables.wait(match_title_re(vot.name))
    check_match_table(stack, index, want)
    b.wait_log(r"table\.load\.votable from STILTS: match 'positions\.vot'")
    b.wait_log(r"4 input rows, 0 without a position, 1 without a match")
    wait_for(lambda: stilts.poll() is not None, 30, 0.1, what="STILTS to get its replies")
    assert stilts.returncode == 0, (tmp_path / "stilts.log").read_text()
    b.check()
    b.stop()


@pytest.mark.parametrize("stack", HUBS_MATCH, indirect=True)
def test_topcat_broadcast_table_is_matched(stack, bridge, sources, vo_server, tmp_path):
    b = bridge({"images.enabled": False})
    fresh_topcat(stack)
    rows = match_input(sources)
    want = expected_matches(vo_server, rows)
    vot = write_positions(tmp_path / "broadcast.vot", rows)
    r = stack.send_votable("topcat", vot, table_id="scenario7-broadcast", name="my list")
    assert r["samp.status"] == "samp.ok", r
    TopcatTables(stack, b, before=0).wait("^my list$")  # TOPCAT was (re)started above
    tables = TopcatTables(stack, b)
    topcat_broadcast(stack, b, "my list")
    index = tables.wait(match_title_re("my list"))
    check_match_table(stack, index, want)
    b.stop()


def test_topcat_row_highlight_gives_a_cone(stack, bridge, vo_server):
    b = bridge({"images.enabled": False})
    fresh_topcat(stack)
    tables = TopcatTables(stack, b)
    resp = stack.call_ok(b.id, "x-sampbridge.query.cone", {"ra": str(RHO[0]),
                                                           "dec": str(RHO[1])})
    first = tables.wait("^" + re.escape(resp["name"]) + "$")
    rows = stack.topcat_table_rows(first)
    # a row among the first few (visible without scrolling), away from the cone centre
    k = next(i for i, r in enumerate(rows[:8], start=1)
             if i > 1 and float(r["_r"]) * 3600 > 20)
    ra, dec = float(rows[k - 1]["ra"]), float(rows[k - 1]["dec"])

    tables = TopcatTables(stack, b)
    # sky and row: TOPCAT then sends coord.pointAt.sky and table.highlight.row together
    wait_current(stack, resp["name"])
    stack.topcat_enable_activation(sky=True, row=True)
    stack.topcat_click_row(k)
    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    assert topcat_names(stack, index) == cone_names(vo_server, ra, dec)
    b.wait_log(rf"table\.highlight\.row from topcat: row {k - 1} of "
               rf"'{re.escape(resp['name'])}' at {ra:.5f} {dec:+.5f}")
    stats = b.stop()
    # one query for the custom cone, one for the click (pointAt + highlight coalesced)
    assert stats["queries"] == 2 and stats["errors"] == 0, stats
    assert tables.count() == tables.before + 1


# ============================================================================= 8. folder
@pytest.mark.parametrize("stack", ["jsamp"], indirect=True)
def test_query_file_dropped_in_the_folder_lands_in_topcat(stack, bridge, vo_server, tmp_path):
    qdir = tmp_path / "queries"
    b = bridge({"images.enabled": False, "folder.enabled": True, "folder.dir": str(qdir),
                "folder.settle": 0.2})
    tables = TopcatTables(stack, b)
    wait_for(qdir.is_dir, 10, what="the watched folder")
    (qdir / "rho.yaml").write_text(
        f"cone: {{ra: {RHO[0]}, dec: {RHO[1]}, radius: 0.02}}\nname: folder cone rho Oph\n")
    index = tables.wait("^folder cone rho Oph$")
    assert topcat_names(stack, index) == cone_names(vo_server, *RHO, sr=0.02)
    status = wait_for(lambda: " OK rho.yaml" in (t := _read(qdir / "status.log")) and t, 10,
                      what="status.log")
    assert "FAILED" not in status
    assert (qdir / "done" / "rho.yaml").is_file() and not (qdir / "rho.yaml").exists()
    b.stop()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


# ============================================================================= 9. screenshots
def _png_ok(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f"{path}: not a real PNG"


@pytest.mark.parametrize("stack", ["jsamp"], indirect=True)
def test_screenshots_of_topcat_and_ds9(stack, bridge, tmp_path):
    """TOPCAT with a CSC cone table, DS9 with the CSC image and the sources overlaid.

    Written to docs/images/ with SAMPBRIDGE_SCREENSHOTS=1, else to the test's tmp dir.
    """
    out = DOC_IMAGES if os.environ.get("SAMPBRIDGE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    # images on; DS9 also takes the cone table, to overlay the sources on the image
    b = bridge({"send_tables_to": ["topcat", "saoimageds9"]})
    fresh_topcat(stack)
    gui = stack.topcat_gui
    tables = TopcatTables(stack, b)
    stack.ds9_send_point_at(*RHO)
    index = tables.wait("^" + re.escape(cone_title(*RHO)) + "$")
    wait_ds9_file(stack, b.results)
    b.wait_log(r"images .* -> .*SAOImageDS9")

    # the mimic answers cone searches in BINARY, which DS9 8.4.1 would load as an empty
    # catalog: sampbridge sends DS9 a TABLEDATA copy (tables.tabledata_for), with every row
    n = len(stack.topcat_table(index))

    def overlaid() -> bool:
        cats = ds9_catalog_list(stack, tmp_path)
        return any(k == n and title.endswith(".tabledata.vot") for _, k, title in cats)

    wait_for(overlaid, 20, 0.2, what=f"DS9 to overlay the {n} sources")
    b.wait_log(r": \d+ rows in .* -> .*SAOImageDS9")
    for cmd in (("zoom", "to", "fit"), ("scale", "log"), ("scale", "minmax"), ("cmap", "heat")):
        stack.xpaset(*cmd)
    with contextlib.suppress(PeerError):  # DS9's catalog window hides TOPCAT otherwise
        gui.move(gui.window("^Catalog Tool$", timeout=2), 1600, 1000)

    ctl = gui.window("^TOPCAT$")
    _, _, ctl_w, ctl_h = gui.geometry(ctl)
    browser = gui.open_table_browser()
    gui.resize(browser, ctl_w, 470)
    gui.move(browser, 0, ctl_h)
    gui.raise_window(ctl)
    gui.raise_window(browser)
    _png_ok(stack.screenshot(out / "topcat-csc-cone-table.png", crop=(0, 0, ctl_w, ctl_h + 470)))
    ds9_win = gui.window("^SAOImage ")
    gui.raise_window(ds9_win)
    _png_ok(stack.screenshot(out / "ds9-csc-image-and-sources.png", crop=gui.geometry(ds9_win)))
    _png_ok(stack.screenshot(out / "sampbridge-desktop.png"))
    b.stop()


# ============================================================================= 6. hub lost
def test_late_hub_and_lost_hub(stack, bridge, mimic_image, vo_server):
    # Aladin would be restarted at every hub restart (harness README); it is not needed here
    if stack.is_running("aladin"):
        stack.stop_peer("aladin")
    stack.kill_hub()  # a clean stop: no hub, no lockfile
    b = bridge({"images.enabled": False}, start=False).start(register=False)
    b.wait_log(r"no SAMP hub yet \(hub\.mode=connect\); waiting for one")
    assert "registered with the SAMP hub" not in b.log()

    # late hub: sampbridge registers within seconds of the hub appearing
    stack.start_hub()
    t0 = time.monotonic()
    b.wait_registered(timeout=10)
    late = time.monotonic() - t0
    assert late < 5, f"sampbridge registered {late:.1f}s after the hub appeared"
    stack.reconnect_peers(grace=3)

    # lost hub: killed (stale lockfile, no goodbye), then a new one
    stack.kill_hub(hard=True)
    b.wait_log(r"lost the SAMP hub; reconnecting")
    stack.restart_hub(grace=2)
    t0 = time.monotonic()
    b.wait_registered(timeout=10)
    assert time.monotonic() - t0 < 5
    b.wait_log(r"registered with the SAMP hub as", count=2)

    # and scenario 1 works again
    ds9_click_to_topcat(stack, b, mimic_image, vo_server)
    stats = b.stop()
    assert stats["queries"] == 1 and stats["errors"] == 0
