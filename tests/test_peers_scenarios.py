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
from pyvo.dal import SCSService

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import wait_for
from peers.harness import (
    PeerError,
    PeerStack,
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

    def __init__(self, stack: PeerStack, workdir: Path, vo: str, settings: dict[str, Any],
                 shipped: bool = False):
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
        }
        if not shipped:      # shipped: config.yaml's defaults but for the services and results
            values.update({
                "http.connect_timeout": 5.0,
                "http.read_timeout": 30.0,
                "hub.mode": "connect",
                "hub.ping_interval": 0.5,
                "pointat.quiet": 0.2,
                "folder.enabled": False,
            })
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

    def make(settings: dict[str, Any] | None = None, start: bool = True,
             shipped: bool = False) -> SampBridge:
        b = SampBridge(stack, tmp_path / f"sampbridge-{len(made) + 1}", vo_server,
                       dict(settings or {}), shipped=shipped)
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
def sky_image(tmp_path_factory) -> Path:
    """An image of rho Oph for the viewers to show (DS9 broadcasts pans only over a WCS image;
    Aladin offline needs one): the user's own kind, 400" wide, with INSIDE on it.

    (The mimic's own b-band image here is CXC's 4096 x 4096 full field, 67 MB once
    decompressed: too slow a load for every story.)"""
    return user_image(tmp_path_factory.mktemp("sky-image") / "rho_oph.fits")


# ----------------------------------------------------------------------------- helpers
def _sep_arcsec(a: tuple[float, float], b: tuple[float, float]) -> float:
    r1, d1, r2, d2 = map(math.radians, (*a, *b))
    h = math.sin((d2 - d1) / 2) ** 2 + math.cos(d1) * math.cos(d2) * math.sin((r2 - r1) / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0


def direct_cone(vo: str, ra: float, dec: float, sr: float = CONE_RADIUS,
                verb: int = 2) -> Table:
    """The same cone asked of the mimic directly (pyvo SCS, VERB=2 unless told)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SCSService(f"{vo}/csc21scs/coneSearch").search((ra, dec), sr,
                                                               verbosity=verb).to_table()


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
            except Exception as e:  # one lost reply: ask again
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
        except Exception:  # no table yet, or a reply lost: ask again
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
    t["sep"] = [_sep_arcsec(RHO, (float(r["ra"]), float(r["dec"]))) for r in t]
    t.sort("sep")
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
            t["sep"] = [_sep_arcsec((ra, dec), (float(r["ra"]), float(r["dec"]))) for r in t]
            t.sort("sep")
            out[ident] = str(t["name"][0])
    return out


def check_match_table(st: PeerStack, index: int, want: dict[str, str]) -> None:
    rows = st.topcat_table_rows(index)
    got = {r["id"]: r["name_csc"] for r in rows}
    assert got == want, f"match rows {got} != direct cones {want}"
    assert len(rows) == len(want)
    assert all(float(r["sep_arcsec"]) <= MATCH_RADIUS for r in rows)


# ============================================================================= 1. DS9 click
def ds9_click_to_topcat(stack, b, sky_image, vo_server):
    """Scenario 1: DS9 shows an image and pans to a source; return (ra, dec, TOPCAT tables,
    CSC names in the new table), having checked them against a direct cone."""
    stack.call_ok("ds9", "image.load.fits", {"url": sky_image.as_uri(), "name": "rho Oph"})
    tables = TopcatTables(stack, b)
    with stack.connect_client("ds9-watcher", ["coord.pointAt.sky"]) as rec:
        stack.ds9_send_point_at(*INSIDE)
        sent = rec.wait_for("coord.pointAt.sky", sender=stack.peer_id("ds9"))
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    got = topcat_names(stack, index)
    assert got == cone_names(vo_server, ra, dec)
    return ra, dec, tables, got


def test_ds9_click_gives_the_cone_table_in_topcat(stack, bridge, sky_image, vo_server):
    b = bridge({"images.enabled": False})
    ra, dec, tables, got = ds9_click_to_topcat(stack, b, sky_image, vo_server)
    assert _sep_arcsec((ra, dec), INSIDE) < 0.1 and len(got) > 10
    b.wait_log(rf"coord\.pointAt\.sky from SAOImageDS9: {ra:.5f} {dec:+.5f}\n")
    b.wait_log(rf"cone {ra:.5f} {dec:+.5f} r=0\.05 VERB=2 for SAOImageDS9: {len(got)} rows .*"
               r"-> topcat")
    stats = b.stop()
    assert stats["queries"] == 1 and stats["delivered"] == 1 and stats["errors"] == 0
    assert tables.count() == tables.before + 1


# ============================================================================= 2. Aladin reticle
def test_aladin_reticle_gives_table_in_topcat_and_image_in_ds9(stack, bridge, sky_image,
                                                               vo_server):
    aladin = ensure_aladin(stack, sky_image)
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


def test_aladin_listed_in_send_tables_to_gets_the_cone_table(stack, bridge, sky_image,
                                                             vo_server, tmp_path):
    """Aladin as a table recipient: the cone's sources become a catalog plane over the image.

    Aladin 12.001 never answers its first table.load.votable call (it loads the table all
    the same): the delivery must not wait for it, and TOPCAT gets its table at once.
    """
    aladin = ensure_aladin(stack, sky_image)
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


def test_ds9_echo_after_an_image_load_starts_no_query(stack, bridge, sky_image):
    # the click comes from Aladin: the CSC image goes to DS9, the viewer that did not click
    aladin = ensure_aladin(stack, sky_image)
    # a long echo window, so that a slow machine still pans within it
    b = bridge({"echo.window": 20.0})
    tables = TopcatTables(stack, b)
    ds9 = stack.peer_id("ds9")
    with stack.connect_client("echo-watcher", ["coord.pointAt.sky"]) as rec:
        stack.aladin_send_point_at(*INSIDE)
        click = rec.wait_for("coord.pointAt.sky", sender=aladin)
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
    # Aladin, the viewer that clicked, got the sources drawn on its own view, not the image
    assert re.search(r"overlay of \d+ CSC sources for Aladin -> Aladin", b.log())
    assert not re.search(r"images .* -> .*Aladin", b.log())


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
             if i > 1 and _sep_arcsec(RHO, (float(r["ra"]), float(r["dec"]))) > 20)
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
    # one query for the custom cone, one for the click: its pointAt runs at once, and the
    # highlight of the same row is the same click, answered once (not a second run that
    # would supersede the first)
    assert stats["queries"] == 2 and stats["errors"] == 0, stats
    assert stats["leading"] == 1 and stats["coalesced_runs"] == 1, stats
    assert "superseded" not in b.log()
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

    A script's click puts the CSC image in DS9; a click in DS9 then overlays the sources.

    Written to docs/images/ with SAMPBRIDGE_SCREENSHOTS=1, else to the test's tmp dir.
    """
    out = DOC_IMAGES if os.environ.get("SAMPBRIDGE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    # images on; DS9 also takes the cone table, to overlay the sources on the image
    b = bridge({"send_tables_to": ["topcat", "saoimageds9"]})
    fresh_topcat(stack)
    gui = stack.topcat_gui
    tables = TopcatTables(stack, b)
    # a click sent by a script (this harness's client): the CSC image goes to DS9, which did
    # not send it (a click in DS9 itself would draw the sources on DS9's own image instead)
    stack.notify(b.id, "coord.pointAt.sky", {"ra": str(RHO[0]), "dec": str(RHO[1])})
    tables.wait("^" + re.escape(cone_title(*RHO)) + "$")
    wait_ds9_file(stack, b.results)
    b.wait_log(r"images .* -> .*SAOImageDS9")

    # the table went first, into the frame DS9 showed then; a click in DS9 on the CSC image
    # now brings the cone's table (a catalog) and its ellipses (regions) onto it
    tables = TopcatTables(stack, b)
    ra, dec = ds9_pan_click(stack, b, INSIDE)
    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    b.wait_log(r"overlay of \d+ CSC sources for SAOImageDS9 -> SAOImageDS9")
    # DS9 8.4.1 loads a BINARY VOTable as an empty catalog: sampbridge sends DS9 a TABLEDATA
    # copy (tables.tabledata_for) when the service answered BINARY (the CXC-shaped mimic
    # answers TABLEDATA): every row is there either way
    n = len(stack.topcat_table(index))

    def overlaid() -> bool:
        cats = ds9_catalog_list(stack, tmp_path)
        return bool(cats) and cats[-1][1] == n and cats[-1][2].endswith(".vot")

    wait_for(overlaid, 20, 0.2, what=f"DS9 to overlay the {n} sources")
    b.wait_log(rf"cone {ra:.5f} .*: {n} rows in .* -> .*SAOImageDS9")
    # this picture shows the catalog's circles: the ellipses' group (with ~100 names, a
    # crowd of labels at this zoom) is shown by test_a_click_on_the_users_own_image_...
    stack.xpaset("regions", "group", "sampbridge", "delete")
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
def test_late_hub_and_lost_hub(stack, bridge, sky_image, vo_server):
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
    ds9_click_to_topcat(stack, b, sky_image, vo_server)
    stats = b.stop()
    assert stats["queries"] == 1 and stats["errors"] == 0


# ============================================================================= 10. a real desk
#: the user's own image: not a CSC one, 400 x 400 pixels of 1" around rho Oph, north up
USER_IMAGE_SIZE = 400
_REGION = re.compile(r"^(ellipse|point)\(([^)]*)\)\s*#(.*)$")


def user_image(path: Path) -> Path:
    """Write the user's own FITS image (astropy, TAN WCS at rho Oph); return its path."""
    import numpy as np

    n = USER_IMAGE_SIZE
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(RHO)
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    yy, xx = np.mgrid[0:n, 0:n]
    rng = np.random.default_rng(7)
    sky = rng.normal(10.0, 1.0, (n, n))
    for x0, y0 in rng.uniform(30, n - 30, (25, 2)):          # some stars of the user's own
        sky += 400 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8.0)
    hdu = fits.PrimaryHDU(sky.astype(np.float32), header=w.to_header())
    hdu.header["OBJECT"] = "rho Oph (my own image)"
    hdu.writeto(path)
    return path


def ds9_show_user_image(st: PeerStack, image: Path) -> tuple[str, str]:
    """Open the user's image in DS9 in a fresh frame, as File > Open does; (frame, file)."""
    st.xpaset("frame", "delete", "all")
    st.xpaset("frame", "new")
    st.xpaset("fits", str(image))
    st.xpaset("zoom", "to", "fit")
    return st.xpaget("frame"), st.xpaget("file")


def ds9_regions(st: PeerStack) -> list[tuple[str, list[float], str]]:
    """sampbridge's regions in DS9, read back in fk5: (shape, numbers, properties)."""
    out = []
    for line in st.xpaget("regions", "-system", "wcs", "-sky", "fk5").splitlines():
        m = _REGION.match(line.strip())
        if m and "tag={sampbridge}" in m.group(3):
            out.append((m.group(1), [float(v.rstrip('"')) for v in m.group(2).split(",")],
                        m.group(3)))
    return out


def ds9_pan_click(st: PeerStack, b: SampBridge, target: tuple[float, float],
                  tries: int = 3) -> tuple[float, float]:
    """Pan DS9 (XPA ``pan to``, DS9's natural path); return the position sampbridge got.

    No other client listens: the position is read from sampbridge's log.  DS9 skips a
    broadcast while it handles a SAMP message, so a pan that sent nothing is repeated.
    """
    rx = r"coord\.pointAt\.sky from SAOImageDS9: (\S+) (\S+)\n"
    before = len(re.findall(rx, b.log()))
    for attempt in range(tries):
        try:
            st.ds9_send_point_at(target[0], target[1] + attempt * 1e-4, via="pan")
        except PeerError as e:      # what the hub says, beside what DS9 believes
            subs = {c: st.client.get_metadata(c).get("samp.name") for c in
                    st.client.get_subscribed_clients("image.load.fits")}
            raise AssertionError(f"{e}; the hub's image.load.fits subscribers: {subs}\n"
                                 f"{b.tail()}") from None
        try:
            m = b.wait_log(rx, count=before + 1, timeout=10)[-1]
            return float(m.group(1)), float(m.group(2))
        except AssertionError:
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def topcat_cone(stack: PeerStack, tables: TopcatTables, ra: float, dec: float) -> Table:
    index = tables.wait("^" + re.escape(cone_title(ra, dec)) + "$")
    return stack.topcat_table(index)


def check_ds9_overlay(regions, table: Table, vo: str, ra: float, dec: float) -> None:
    """DS9's read-back regions are the cone's sources: number, centre (< 0.1") and size."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord

    assert len(regions) == len(table) > 10, (len(regions), len(table))
    rows = {str(r["name"]): r for r in table}
    # the axes and angle are in the VERB=3 columns: asked of the mimic directly
    full = {str(r["name"]): r for r in direct_cone(vo, ra, dec, CONE_RADIUS * 1.01, verb=3)}
    for shape, vals, props in regions:
        name = re.search(r"text=\{([^}]*)\}", props).group(1)
        r = rows[name]
        want = SkyCoord(float(r["ra"]) * u.deg, float(r["dec"]) * u.deg).fk5   # ICRS -> FK5
        got = SkyCoord(vals[0] * u.deg, vals[1] * u.deg, frame="fk5")
        assert got.separation(want).arcsec < 0.1, (name, got, want)
        assert shape == "ellipse", (name, shape)
        f = full[name]
        r0, r1, pa = float(f["err_ellipse_r0"]), float(f["err_ellipse_r1"]), \
            float(f["err_ellipse_ang"])
        if r1 > r0:
            r0, r1, pa = r1, r0, pa + 90
        assert vals[2:4] == pytest.approx([r0, r1], abs=1e-3), name
        assert float(r["err_ellipse_r0"]) == pytest.approx(max(r0, r1), abs=1e-3)
        turn = (vals[4] - (pa + 90)) % 180                       # DS9: position angle + 90
        assert min(turn, 180 - turn) < 1e-3, (name, vals[4], pa)


def test_ds9_pan_beside_topcat_alone_gives_the_cone_table(stack, bridge, vo_server, tmp_path):
    """DS9 + TOPCAT + sampbridge only, shipped defaults: DS9's own pan reaches sampbridge.

    DS9 broadcasts a pan only while another client subscribes to image.load.fits (TOPCAT does
    not): sampbridge does, for images in.
    """
    if stack.is_running("aladin"):
        stack.stop_peer("aladin")
    ds9 = stack.peer_id("ds9")

    def image_takers() -> set[str]:
        return set(stack.client.get_subscribed_clients("image.load.fits")) - {ds9}

    wait_for(lambda: not image_takers(), 20, 0.2, what="no image subscriber but DS9")
    ds9_show_user_image(stack, user_image(tmp_path / "my_rho_oph.fits"))
    b = bridge(shipped=True)
    assert image_takers() == {b.id}                    # sampbridge, and nobody else
    tables = TopcatTables(stack, b)
    ra, dec = ds9_pan_click(stack, b, INSIDE)
    assert _sep_arcsec((ra, dec), INSIDE) < 1
    t = topcat_cone(stack, tables, ra, dec)
    want = direct_cone(vo_server, ra, dec)
    assert sorted(map(str, t["name"])) == sorted(map(str, want["name"])) and len(t) > 10
    assert t.colnames == want.colnames                 # cone.verb 2: the VERB=2 columns
    b.wait_log(r"overlay of \d+ CSC sources for SAOImageDS9 -> SAOImageDS9")
    stats = b.stop()
    # leading edge: the single pan ran at once, without waiting pointat.quiet (the counters)
    assert stats["leading"] == 1 and stats["coalesced_runs"] == 1, stats
    assert stats["queries"] == 1 and stats["errors"] == 0 and stats["overlays"] == 1, stats


def test_a_click_on_the_users_own_image_in_ds9_draws_the_ellipses_and_keeps_the_view(
        stack, bridge, vo_server, tmp_path):
    """Shipped defaults: DS9 keeps its frame and file; the CSC 95% error ellipses are drawn on
    the user's image as regions (read back in fk5) that match the cone's sources."""
    out = DOC_IMAGES if os.environ.get("SAMPBRIDGE_SCREENSHOTS") == "1" else tmp_path
    image = user_image(tmp_path / "my_rho_oph.fits")
    frame, file = ds9_show_user_image(stack, image)
    assert Path(file).name == image.name
    stack.xpaset("regions", "command", "{circle 100 100 20}")   # a region of the user's own
    b = bridge(shipped=True)
    tables = TopcatTables(stack, b)
    ra, dec = ds9_pan_click(stack, b, RHO)
    t = topcat_cone(stack, tables, ra, dec)
    regions = wait_for(lambda: (r := ds9_regions(stack)) and len(r) == len(t) and r, 30, 0.2,
                       what=f"DS9 to show the {len(t)} CSC ellipses")
    check_ds9_overlay(regions, t, vo_server, ra, dec)
    # the view stays the user's: same frame, same file, their own region kept, no new frame
    assert (stack.xpaget("frame"), stack.xpaget("file")) == (frame, file)
    assert stack.xpaget("frame", "all").split() == [frame]
    assert "circle(100,100,20)" in stack.xpaget("regions", "-system", "image")

    # the next click replaces the group: the regions do not pile up
    tables = TopcatTables(stack, b)
    ra2, dec2 = ds9_pan_click(stack, b, INSIDE)
    t2 = topcat_cone(stack, tables, ra2, dec2)
    again = wait_for(lambda: (r := ds9_regions(stack)) and len(r) == len(t2) and
                     {re.search(r"text=\{([^}]*)\}", p).group(1) for _, _, p in r}
                     == set(map(str, t2["name"])) and r, 30, 0.2, what="the second overlay")
    check_ds9_overlay(again, t2, vo_server, ra2, dec2)
    assert (stack.xpaget("frame"), stack.xpaget("file")) == (frame, file)
    b.check()
    stats = b.stop()
    assert stats["overlays"] == 2 and stats["errors"] == 0, stats

    # the screenshot for docs/screenshots.md: the user's image with the CSC ellipses on it
    # CSC 95% ellipses are mostly under 1": zoom in on the largest one inside the image
    inside = [r for r in t2 if _sep_arcsec(RHO, (float(r["ra"]), float(r["dec"]))) < 180]
    big = max(inside, key=lambda r: float(r["err_ellipse_r0"]))
    for cmd in (("zoom", "to", "16"), ("pan", "to", str(float(big["ra"])),
                                       str(float(big["dec"])), "wcs", "fk5"),
                ("scale", "linear"), ("scale", "zscale"), ("cmap", "grey")):
        stack.xpaset(*cmd)
    gui = stack.topcat_gui
    ds9_win = gui.window("^SAOImage ")
    gui.raise_window(ds9_win)
    _png_ok(stack.screenshot(out / "ds9-user-image-csc-ellipses.png",
                             crop=gui.geometry(ds9_win)))


def _aladin_backup(st: PeerStack, path: Path) -> str:
    st.aladin_script(f"backup {path}")
    return wait_for(lambda: path.is_file() and (t := _read(path)).rstrip().endswith(
        "</ALADINJAVA>") and t, 30, 0.1, what="Aladin's stack backup")


def _aladin_tool_rows(text: str, label: str = "sampbridge") -> list[list[list[str]]]:
    """Rows (tab-separated fields) of every Tool plane called ``label`` in a backup."""
    import xml.etree.ElementTree as ET

    planes = []
    for plane in ET.fromstring(text).iter("PLANE"):
        if plane.get("type") == "Tool" and plane.get("label") == label:
            body = "".join(v.text or "" for v in plane.iter("VALUE"))
            planes.append([line.split("\t") for line in body.splitlines() if line.strip()])
    return planes


def test_a_click_in_aladin_on_the_users_image_draws_the_sources_and_keeps_the_view(
        stack, bridge, vo_server, tmp_path):
    """Shipped defaults: Aladin keeps the user's image as its view; the sources are drawn in
    one plane, read back from Aladin's own backup of its stack."""
    import xml.etree.ElementTree as ET

    from astropy import units as u
    from astropy.coordinates import SkyCoord

    if not stack.is_running("aladin"):
        stack.start_aladin()
    image = user_image(tmp_path / "aladin_user.fits")
    label = f"mine{next(_counter)}"
    stack.call_ok("aladin", "image.load.fits", {"url": image.as_uri(), "name": label},
                  timeout=60)
    polls = itertools.count()
    wait_for(lambda: any(v.get("pref") == label for v in ET.fromstring(_aladin_backup(
        stack, tmp_path / f"view-{next(polls)}.aj")).iter("VIEW")), 30, 0.2,
        what=f"Aladin's view to show {label}")
    b = bridge(shipped=True)
    tables = TopcatTables(stack, b)
    aladin = stack.peer_id("aladin")
    with stack.connect_client("aladin-watcher", ["coord.pointAt.sky"]) as rec:
        stack.aladin_send_point_at(*INSIDE)
        sent = rec.wait_for("coord.pointAt.sky", sender=aladin)
    ra, dec = float(sent.params["ra"]), float(sent.params["dec"])
    t = topcat_cone(stack, tables, ra, dec)
    b.wait_log(r"overlay of \d+ CSC sources for Aladin -> Aladin")
    text = _aladin_backup(stack, tmp_path / "after.aj")
    (rows,) = _aladin_tool_rows(text)
    labels = [r for r in rows if r[0] == "taglabel"]
    want = {str(r["name"]): r for r in t}
    assert len(labels) == len(want) > 10
    for r in labels:
        src = want[r[-1].split("|")[0]]
        got = SkyCoord(float(r[2]) * u.deg, float(r[3]) * u.deg)
        assert got.separation(SkyCoord(float(src["ra"]) * u.deg,
                                       float(src["dec"]) * u.deg)).arcsec < 0.1
    # Aladin 12.001 writes its ellipses without their axes (tests/test_overlay.py measures
    # them on the screen): one row per source
    assert sum(r[0] == "unknown" for r in rows) >= len(want)
    root = ET.fromstring(text)
    assert any(v.get("pref") == label for v in root.iter("VIEW")), "the view left the image"
    assert not re.search(r"images .* -> .*Aladin", b.log())   # no CSC image into Aladin
    b.check()
    b.stop()


def test_an_image_broadcast_by_a_script_gives_the_sources_of_its_footprint(
        stack, bridge, vo_server, tmp_path):
    """A script broadcasts the user's image: DS9 shows it, TOPCAT gets the CSC sources of its
    footprint, and DS9 the ellipses over it."""
    b = bridge(shipped=True)
    tables = TopcatTables(stack, b)
    image = user_image(tmp_path / "broadcast_me.fits")
    stack.xpaset("frame", "delete", "all")
    stack.client.notify_all({"samp.mtype": "image.load.fits",
                             "samp.params": {"url": image.as_uri(), "name": "my field"}})
    (m,) = b.wait_log(r"the footprint of my field is the cone (\S+) (\S+) r=(\S+)\n")
    ra, dec, radius = (float(v) for v in m.groups())
    assert _sep_arcsec((ra, dec), RHO) < 1
    assert radius * 3600 == pytest.approx(200 * math.sqrt(2), rel=0.01)
    index = tables.wait("^CSC 2.1 sources of my field$")
    got = stack.topcat_table(index)
    assert sorted(map(str, got["name"])) == sorted(
        map(str, direct_cone(vo_server, ra, dec, radius)["name"]))
    wait_for(lambda: Path(stack.xpaget("file")).name == image.name, 30, 0.2,
             what="DS9 to show the broadcast image")
    regions = wait_for(lambda: (r := ds9_regions(stack)) and len(r) == len(got) and r, 30,
                       0.2, what="the ellipses over the image")
    assert len(regions) == len(got) > 10

    # DS9's own send, File > SAMP > Image > sampbridge: DS9 saves its frame to a file of its
    # own (file://localhost//...) and notifies sampbridge
    tables = TopcatTables(stack, b)
    stack.ds9_source_tcl(f"SAMPSendImageLoadFits {b.id}")
    index = tables.wait(r"^CSC 2\.1 sources of broadcast_me")
    assert sorted(map(str, stack.topcat_table(index)["name"])) == sorted(map(str, got["name"]))
    b.check()
    stats = b.stop()
    assert stats["queries"] == 2 and stats["errors"] == 0, stats
