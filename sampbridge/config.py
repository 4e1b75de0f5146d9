"""Configuration: one table of settings, each with a default, a type and help text.

The YAML file mirrors the dotted keys of :data:`SETTINGS` as nested mappings
(``services.cone`` is ``services: {cone: ...}``).  Unknown keys, wrong types and
bad values are rejected with the file, the line and the key named.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SampBridgeError

__all__ = ["Setting", "SETTINGS", "Config", "ConfigError", "load_config", "default_results_dir"]


class ConfigError(SampBridgeError, ValueError):
    """A configuration problem, with the file, line and key it concerns."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 key: str | None = None) -> None:
        self.path, self.line, self.key, self.reason = path, line, key, message
        where = ""
        if path:
            where = f"{path}:{line}: " if line else f"{path}: "
        keypart = f"{_clip(key)}: " if key else ""
        super().__init__(f"{where}{keypart}{message}")
        #: every problem found in the file (this one first); ``check-config`` lists them all
        self.problems: list[ConfigError] = [self]

    @classmethod
    def of(cls, problems: list[ConfigError]) -> ConfigError:
        """One error that carries every problem of a file, shown one per line."""
        first = problems[0]
        if len(problems) == 1:
            return first
        err = cls(first.reason, first.path, first.line, first.key)
        err.problems = list(problems)
        err.args = ("\n".join(str(e) for e in problems),)
        return err


def _clip(text: str, limit: int = 60) -> str:
    """Return ``text`` cut to ``limit`` characters (a user's text in an error stays short)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _show(value: Any, limit: int = 60) -> str:
    """Return a short repr of a user's value for an error message (never the whole of it)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 4] + "...'"


def default_results_dir() -> str:
    """Return the default results folder (XDG data home)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                          "share")
    return os.path.join(base, "sampbridge", "results")


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _nonneg(v: float) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _choice(*options: Any) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in options else "must be one of " + ", ".join(map(str, options))
    return check


def _url(v: str) -> str | None:
    return None if v.startswith(("http://", "https://")) else "must be an http:// or https:// URL"


def _range(lo: float, hi: float) -> Callable[[float], str | None]:
    def check(v: float) -> str | None:
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"
    return check


def _names(v: list) -> str | None:
    if all(isinstance(x, str) and x for x in v):
        return None
    return "must be a list of client names (strings, glob patterns allowed)"


@dataclass(frozen=True)
class Setting:
    """One configuration key: its default, its type, its help text and a value check."""

    key: str
    default: Any
    type: type | tuple[type, ...]
    help: str
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)


_F = (int, float)

#: The one table of settings.  ``docs/configuration.md`` documents every key (a test checks it).
SETTINGS: tuple[Setting, ...] = (
    Setting("release", "2.1", str,
            "CSC release label used in table names, e.g. 'CSC 2.1 cone ...'."),
    Setting("services.cone", "https://cda.cfa.harvard.edu/csc21scs/coneSearch", str,
            "Simple Cone Search (SCS) URL of the catalogue.", _url),
    Setting("services.siap", "https://cda.cfa.harvard.edu/csc21siap/queryImages", str,
            "Simple Image Access (SIAP v1) URL of the catalogue images.", _url),
    Setting("services.tap", "https://cda.cfa.harvard.edu/csc21tap", str,
            "TAP service base URL (without /sync or /async).", _url),
    Setting("http.connect_timeout", 10.0, _F, "Seconds to wait for a TCP connection.", _positive),
    Setting("http.read_timeout", 120.0, _F,
            "Seconds to wait for the server between two reads of a response.", _positive),
    Setting("http.compress", "auto", str,
            "Ask services for gzip-compressed responses: auto (remote hosts only, not "
            "loopback), yes or no.", _choice("auto", "yes", "no")),
    Setting("http.retries", 2, int,
            "Retries of an idempotent request (GET) after a connection error or 502/503/504.",
            _range(0, 10)),
    Setting("cone.radius", 0.05, _F, "Default cone radius in degrees.", _range(1e-6, 10.0)),
    Setting("cone.max_radius", 1.0, _F, "Largest cone radius a message may ask for, degrees.",
            _range(1e-6, 90.0)),
    Setting("cone.verb", 2, int, "Default SCS VERB level (1 = name/ra/dec, 2 = summary, 3 = all).",
            _choice(1, 2, 3)),
    Setting("cone.service", "scs", str,
            "Which service runs cones: 'scs' (cone search) or 'tap' (ADQL cone on master_source).",
            _choice("scs", "tap")),
    Setting("cone.source", "auto", str,
            "Who answers cones and matches: 'auto' (the local mirror when one is built for this "
            "release and these services and holds the columns asked, else the service), "
            "'service' (always the service) or 'mirror' (the mirror; the service only when the "
            "mirror cannot answer). See docs/mirror.md.", _choice("auto", "service", "mirror")),
    Setting("images.enabled", True, bool, "Run a SIAP query and send images on a sky click."),
    Setting("images.size", 0.2, _F,
            "SIAP SIZE in degrees. A query that finds no FITS image is asked once more with "
            "SIZE min(max(4 x SIZE, 0.1), 1).", _range(1e-6, 10.0)),
    Setting("images.format", "image/fits", str,
            "SIAP FORMAT (image/fits is what DS9 and Aladin load)."),
    Setting("images.max_count", 1, int, "How many images to download per click (nearest first).",
            _range(0, 20)),
    Setting("images.max_bytes", 10_000_000, int,
            "Size cap for one image, in bytes, downloaded and decompressed; a larger image is "
            "skipped with a log line (CSC full-field images are 50-90 MB: raise this to get "
            "them).", _positive),
    Setting("images.skip_repeat", True, bool,
            "On a sky click, do not send again the image the previous click sent (the viewer "
            "would reload it and lose its pan, zoom and scale, or stack a copy)."),
    Setting("images.to_sender", False, bool,
            "Send the image to the viewer that sent the click too (it then opens a new frame or "
            "plane over the user's own image); off: that viewer gets the CSC sources as an "
            "overlay instead, and images go only to the other viewers."),
    Setting("images.header_max_bytes", 1_048_576, int,
            "An image received with image.load.fits: most bytes of FITS header read to find "
            "its sky footprint (the pixels are never read).", _positive),
    Setting("images.prefer_band", "b", str,
            "Energy band preferred among the images found (b, h, m, s, u, w; CXC's CXO_b "
            "spelling is the same band); '' for none."),
    Setting("tap.mode", "async", str,
            "Run TAP queries as 'async' jobs (polled) or 'sync' requests.",
            _choice("async", "sync")),
    Setting("tap.maxrec", 100000, int, "MAXREC sent with TAP queries (0 = server default).",
            _nonneg),
    Setting("tap.job_timeout", 600.0, _F,
            "Seconds an async TAP job may run before it is aborted and deleted.", _positive),
    Setting("tap.dialect", "auto", str,
            "ADQL cone dialect: 'auto' (start with what /capabilities promise; when the "
            "service refuses a dialect's functions, fall back to the next and remember it), "
            "'geometry' (CONTAINS/POINT/CIRCLE), 'csc' (dbo.cone_distance plus a BETWEEN box) "
            "or 'box' (a BETWEEN box only, the distance cut done by sampbridge).",
            _choice("auto", "geometry", "csc", "box")),
    Setting("tap.table", "csc21.master_source", str, "Table used for ADQL cones."),
    Setting("results.dir", "", str,
            "Folder for result files (created private, 0700). Empty: "
            "$XDG_DATA_HOME/sampbridge/results."),
    Setting("cache.enabled", True, bool,
            "Answer a repeated cone or TAP query, and an image already downloaded, from the "
            "on-disk cache (results.dir/cache)."),
    Setting("cache.ttl", 3600.0, _F, "Seconds a cached result stays valid.", _positive),
    Setting("cache.precision", 1.0, _F,
            "Arcsec: cone positions closer than this share a cache entry.", _range(0.0, 3600.0)),
    Setting("results.max_bytes", 500_000_000, int,
            "Size cap for one downloaded table result, in bytes.", _positive),
    Setting("send_tables_to", ["topcat"], list,
            "samp.name patterns (case-insensitive globs) of the clients that receive tables.",
            _names),
    Setting("send_images_to", ["ds9", "saoimageds9", "aladin"], list,
            "samp.name patterns of the clients that receive images.", _names),
    Setting("hub.mode", "auto", str,
            "'auto': use a running hub, else start one; 'connect': only use a running hub "
            "(wait for one); 'start': always start an own hub.",
            _choice("auto", "connect", "start")),
    Setting("hub.ping_interval", 2.0, _F,
            "Seconds between hub pings (a crashed hub sends nothing) and reconnect attempts.",
            _positive),
    Setting("hub.call_timeout", 20.0, _F,
            "Seconds to wait for a peer's reply to a call (table.load.votable, image.load.fits).",
            _positive),
    Setting("hub.send_wait", 5.0, _F,
            "Seconds a delivery waits for the recipients' replies before going on (a later "
            "reply, up to hub.call_timeout, is still logged).", _positive),
    Setting("pointat.enabled", True, bool, "Run a cone when a peer sends coord.pointAt.sky."),
    Setting("pointat.quiet", 0.3, _F,
            "Coalescing: run once no new position came for this many seconds.", _nonneg),
    Setting("pointat.max_wait", 2.0, _F,
            "Coalescing: during a continuous flood, run the latest position at least this often.",
            _positive),
    Setting("echo.window", 5.0, _F,
            "Seconds after a delivery during which pointAt at a delivered position is an echo.",
            _nonneg),
    Setting("echo.radius", 5.0, _F,
            "Arcsec: a pointAt this close to a just-delivered position or image centre is an echo.",
            _nonneg),
    Setting("tables.tabledata_for", ["ds9", "saoimageds9"], list,
            "Table recipients sent a TABLEDATA copy of BINARY results (DS9 8.4 shows a BINARY "
            "VOTable as an empty catalog)."),
    Setting("tables.subscribe", True, bool,
            "Subscribe to table.load.votable/fits and match every table received (SAMP cannot "
            "tell a broadcast from a direct send; see docs/tables.md)."),
    Setting("tables.max_bytes", 200_000_000, int, "Size cap of a received table, in bytes.",
            _positive),
    Setting("tables.max_rows", 200_000, int, "Most rows a received table may have.", _positive),
    Setting("tables.allow_remote", False, bool,
            "Fetch tables from http(s) hosts other than this machine (off: loopback only)."),
    Setting("tables.fetch_timeout", 120.0, _F,
            "Seconds a received table's download may take in all (connection, waits and body), "
            "however slowly its server sends it.", _range(0.1, 86400.0)),
    Setting("tables.cache_size", 32, int,
            "Known tables kept for table.highlight.row and table.select.rowList (LRU).",
            _range(1, 10000)),
    Setting("match.radius", 3.0, _F, "Match radius in arcsec.", _range(1e-3, 3600.0)),
    Setting("match.mode", "best", str,
            "'best': the nearest CSC source per input row; 'all': every source in the radius.",
            _choice("best", "all")),
    Setting("match.strategy", "auto", str,
            "'auto': the local mirror when one holds match.columns (docs/mirror.md), else one "
            "TAP upload join where /capabilities list upload and ADQL geometry, else cone "
            "searches; or force 'mirror', 'upload' or 'cone'.",
            _choice("auto", "mirror", "upload", "cone")),
    Setting("match.parallelism", 4, int,
            "Cone searches in flight at once when matching by cones (be polite).",
            _range(1, 32)),
    Setting("match.batch_cell", 0.1, _F,
            "Degrees: nearby positions are grouped into cells and fetched with one cone per "
            "cell (0 = one cone per row).", _range(0.0, 1.0)),
    Setting("match.verb", 2, int, "SCS VERB used when matching by cones.", _choice(1, 2, 3)),
    Setting("match.columns",
            ["name", "ra", "dec", "err_ellipse_r0", "significance", "conf_flag", "extent_flag",
             "sat_src_flag", "flux_aper_b", "flux_aper_lolim_b", "flux_aper_hilim_b",
             "flux_aper_w", "flux_aper_lolim_w", "flux_aper_hilim_w", "hard_hm", "hard_ms"],
            list, "CSC master_source columns added to each matched row (suffix _csc).", _names),
    Setting("mirror.dir", "", str,
            "Folder of local mirrors of master_source, one folder per release (created "
            "private, 0700). Empty: $XDG_DATA_HOME/sampbridge/mirror."),
    Setting("mirror.parallel", 3, int,
            "TAP requests in flight at once while building the mirror (be polite).",
            _range(1, 8)),
    Setting("mirror.slice_rows", 50000, int,
            "Most rows one TAP request of a mirror build brings; RA slices with more are "
            "split in two.", _range(100, 1_000_000)),
    Setting("folder.enabled", True, bool, "Watch a folder of query files (see docs/folder.md)."),
    Setting("folder.dir", "~/sampbridge/queries", str,
            "The watched folder; done/, failed/ and status.log are kept inside it."),
    Setting("folder.settle", 0.5, _F,
            "Seconds a file's size and time must stay unchanged (after its writer closed it) "
            "before it is run.", _range(0.0, 600.0)),
    Setting("folder.settle_max", 60.0, _F,
            "Seconds after which a quiet file is run even if no close was seen.",
            _range(0.1, 86400.0)),
    Setting("folder.workers", 2, int, "Query files run at once.", _range(1, 32)),
    Setting("folder.scan_interval", 2.0, _F,
            "Seconds between rescans of the folder, a safety net under the watcher.",
            _range(0.1, 3600.0)),
    Setting("hub.backlog", 100, int,
            "Results kept for delivery while no hub is up (oldest dropped beyond this).",
            _range(0, 100000)),
    Setting("reply_within", 15.0, _F,
            "Seconds a custom-MType call may wait for its result before it gets an early "
            "'pending' reply (TOPCAT gives up after 20 s).", _range(0.1, 3600)),
    Setting("workers", 4, int, "Worker threads that run queries.", _range(1, 64)),
)

_BY_KEY = {s.key: s for s in SETTINGS}
_SECTIONS = {s.key.split(".")[0] for s in SETTINGS if "." in s.key}


def _typename(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list"}
    if isinstance(t, tuple):
        return "a number"
    return names.get(t, t.__name__)


def check_value(key: str, value: Any) -> Any:
    """Validate one value for ``key`` and return it (ints are widened to floats where needed).

    Raises
    ------
    ConfigError
        If the key is unknown, the type is wrong or the value is out of range.
    """
    s = _BY_KEY.get(key)
    if s is None:
        raise ConfigError("unknown key", key=key)
    ok_type = isinstance(value, s.type) and not (isinstance(value, bool) and s.type is not bool)
    if not ok_type:
        raise ConfigError(f"must be {_typename(s.type)}, not {_show(value)}", key=key)
    if s.type == _F:
        value = float(value)
    if s.check is not None:
        problem = s.check(value)
        if problem:
            raise ConfigError(f"{problem} (got {_show(value)})", key=key)
    return value


@dataclass
class Config:
    """Validated settings, looked up by dotted key: ``cfg['cone.radius']``."""

    values: dict[str, Any]
    path: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def replace(self, **changes: Any) -> Config:
        """Return a copy with some keys changed (``_`` in argument names stands for ``.``)."""
        vals = dict(self.values)
        for k, v in changes.items():
            key = k if k in _BY_KEY else k.replace("__", ".")
            vals[key] = check_value(key, v)
        return Config(vals, self.path)

    @property
    def results_dir(self) -> Path:
        """The results folder, with ``~`` and variables expanded."""
        raw = self.values["results.dir"] or default_results_dir()
        return Path(os.path.expandvars(os.path.expanduser(raw)))


def defaults() -> Config:
    """Return the default configuration."""
    return Config({s.key: s.default for s in SETTINGS})


#: Largest configuration or query YAML file read, in bytes (a real one is a few kB).
MAX_YAML_BYTES = 1_000_000
#: Deepest nesting of lists and mappings accepted in YAML (a real file nests 3 levels).
MAX_YAML_DEPTH = 50
#: Explicit tags accepted: none, the non-specific ``!`` and ``!!str`` (force text).
_TAGS_OK = (None, "!", "tag:yaml.org,2002:str")


class YAMLRefused(ValueError):
    """YAML that is not read: a syntax error, or an alias, anchor, tag or complex key.

    ``problem`` is one sentence without the place; ``line`` and ``column`` count from 1.
    """

    def __init__(self, problem: str, mark: Any = None, syntax: bool = False) -> None:
        self.problem = problem
        self.line = mark.line + 1 if mark is not None else None
        self.column = mark.column + 1 if mark is not None else None
        self.syntax = syntax
        super().__init__(problem)


def _tag_text(tag: str) -> str:
    core = "tag:yaml.org,2002:"
    return _clip("!!" + tag[len(core):] if tag.startswith(core) else tag, 40)


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses aliases, tags, complex keys and deep nesting.

    Aliases are refused outright (an anchor alone is harmless), so a "billion laughs" file
    costs no more than its size.
    """

    what = "YAML files"
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise YAMLRefused(f"YAML aliases (*name) are not allowed in {self.what}; write the "
                              "value out again", mark)
        tag = getattr(event, "tag", None)
        if tag not in _TAGS_OK:
            raise YAMLRefused(f"YAML tags such as {_tag_text(tag)} are not allowed in "
                              f"{self.what}; write plain values", mark)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise YAMLRefused(f"lists and mappings are nested more than {MAX_YAML_DEPTH} "
                              "levels deep", mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise YAMLRefused(f"complex YAML keys (a list or mapping as a key) are not "
                                      f"allowed in {self.what}; keys are plain names",
                                      key.start_mark)
        return node


def _reader_error(text: str, exc: yaml.reader.ReaderError) -> YAMLRefused:
    pos = exc.position if isinstance(exc.position, int) and exc.position >= 0 else 0
    before = text[:pos]
    mark = yaml.Mark("", pos, before.count("\n"), pos - (before.rfind("\n") + 1), None, 0)
    code = f"#x{exc.character:04x}" if isinstance(exc.character, int) else "a character"
    return YAMLRefused(f"the control character {code} is not allowed in YAML", mark,
                       syntax=True)


def compose_strict(text: str, what: str) -> yaml.Node | None:
    """Compose YAML text into nodes, refusing what a plain settings file never needs.

    Parameters
    ----------
    text : str
        The YAML.
    what : str
        The kind of file, for the message ("query files", "configuration files").

    Returns
    -------
    yaml.Node or None
        The root node (a tree: no node is shared), or ``None`` for an empty document.

    Raises
    ------
    YAMLRefused
        With the line and column, for a syntax error or an alias, a tag (other than
        ``!!str``), complex key or nesting deeper than :data:`MAX_YAML_DEPTH`.
    """
    loader = None
    try:
        loader = _StrictLoader(text)
        loader.what = what
        return loader.get_single_node()
    except YAMLRefused:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YAMLRefused(_clip(exc.problem or exc.context or "syntax error", 120), mark,
                          syntax=True) from None
    except yaml.reader.ReaderError as exc:
        raise _reader_error(text, exc) from None
    except (yaml.YAMLError, RecursionError):
        raise YAMLRefused("the YAML cannot be read", None, syntax=True) from None
    finally:
        if loader is not None:
            loader.dispose()


def plain_value(node: yaml.Node) -> Any:
    """Return the Python value of a node from :func:`compose_strict`.

    Raises
    ------
    YAMLRefused
        For a value YAML cannot build (such as the date 2001-13-45), with its place.
    """
    try:
        return _construct(node)
    except _CANNOT_BUILD:
        pass
    stack = [node]          # find the scalar at fault, to name its place
    while stack:
        item = stack.pop()
        if isinstance(item, yaml.ScalarNode):
            try:
                _construct(item)
            except _CANNOT_BUILD:
                node = item
                break
        elif isinstance(item, yaml.SequenceNode):
            stack.extend(reversed(item.value))
        elif isinstance(item, yaml.MappingNode):
            stack.extend(n for pair in reversed(item.value) for n in reversed(pair))
    raise YAMLRefused("this value cannot be read (write it in quotes to make it text)",
                      node.start_mark)


_CANNOT_BUILD = (yaml.YAMLError, ValueError, TypeError, OverflowError, RecursionError)


def _construct(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _flatten(node: yaml.Node, path: str, problems: list[ConfigError], prefix: str = ""
             ) -> dict[str, tuple[Any, int]]:
    """Return ``{dotted key: (value, line)}``; every problem found is added to ``problems``."""
    out: dict[str, tuple[Any, int]] = {}
    seen: set[str] = set()
    if not isinstance(node, yaml.MappingNode):
        problems.append(ConfigError("the file must hold a mapping of keys to values", path,
                                    node.start_mark.line + 1))
        return out
    for knode, vnode in node.value:
        line = knode.start_mark.line + 1
        key = prefix + str(knode.value)
        if key in seen:
            problems.append(ConfigError("key given twice", path, line, key))
            continue
        seen.add(key)
        if not prefix and key in _SECTIONS and key not in _BY_KEY:
            if isinstance(vnode, yaml.ScalarNode) and vnode.tag.endswith(":null"):
                continue
            if not isinstance(vnode, yaml.MappingNode):
                problems.append(ConfigError("must be a mapping of settings", path, line, key))
                continue
            out.update(_flatten(vnode, path, problems, key + "."))
            continue
        if key not in _BY_KEY:
            known = sorted(k for k in _BY_KEY if k.startswith(prefix)) if prefix else []
            hint = f" (known here: {', '.join(known)})" if known else ""
            problems.append(ConfigError(f"unknown key{hint}", path, line, key))
            continue
        try:
            value = plain_value(vnode)
        except YAMLRefused as exc:
            problems.append(ConfigError(exc.problem, path, exc.line, key))
            continue
        out[key] = (value, line)
    return out


def parse_config_text(text: str, path: str = "<string>") -> Config:
    """Parse YAML text into a validated :class:`Config` over the defaults."""
    try:
        root = compose_strict(text, "configuration files")
    except YAMLRefused as exc:
        col = f" (column {exc.column})" if exc.column else ""
        if exc.syntax:
            col = f", column {exc.column}" if exc.column else ""
            raise ConfigError(f"not valid YAML{col}: {exc.problem}", path, exc.line) from None
        raise ConfigError(f"{exc.problem}{col}", path, exc.line) from None
    cfg = defaults()
    if root is None:
        cfg.path = path
        return cfg
    problems: list[ConfigError] = []
    for key, (value, line) in _flatten(root, path, problems).items():
        try:
            cfg.values[key] = check_value(key, value)
        except ConfigError as exc:
            problems.append(ConfigError(exc.reason, path, line, key))
    if problems:
        # every problem of the file at once, in file order: one run shows them all
        problems.sort(key=lambda e: e.line or 0)
        raise ConfigError.of(problems)
    cfg.path = path
    return cfg


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a configuration file; ``None`` gives the defaults.

    Parameters
    ----------
    path : str or path-like, optional
        A YAML file.  Keys not given keep their defaults.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or holds an unknown key or a bad value.
    """
    if path is None:
        return defaults()
    p = str(path)
    from .safefile import FileRefused, read_regular

    try:
        raw = read_regular(p, MAX_YAML_BYTES, label="it", follow_symlinks=True,
                           cap_name="the limit for configuration files")
    except FileRefused as exc:
        raise ConfigError(f"cannot read the file: {exc}", p) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", p) from None
    return parse_config_text(text, p)


def default_yaml() -> str:
    """Return the documented default configuration as YAML (what ``config.yaml`` holds)."""
    lines = ["# sampbridge configuration: every key with its default.",
             "# Generated from sampbridge/config.py SETTINGS (see docs/configuration.md).",
             "# Keep only the keys you change; unknown keys are rejected with file and line.", ""]
    section = None
    order: dict[str, int] = {}
    for s in SETTINGS:
        order.setdefault(s.key.split(".")[0] if "." in s.key else s.key, len(order))
    grouped = sorted(SETTINGS, key=lambda s: order[s.key.split(".")[0] if "." in s.key
                                                   else s.key])
    for s in grouped:
        head, _, tail = s.key.partition(".")
        if tail and head != section:
            lines += ["", f"{head}:"]
            section = head
        elif not tail and section is not None:
            lines.append("")
            section = None
        indent = "  " if tail else ""
        lines.append(f"{indent}# {s.help}")
        value = yaml.safe_dump(s.default, default_flow_style=True).strip()
        if value.endswith("\n..."):
            value = value[:-4].strip()
        value = value.removesuffix("...").strip()
        if s.key == "results.dir":
            value = '""'
        lines.append(f"{indent}{tail or head}: {value}")
    return "\n".join(lines).replace("\n\n\n", "\n\n").lstrip() + "\n"


def settings_markdown() -> str:
    """Return the settings table as Markdown (pasted into ``docs/configuration.md``)."""
    rows = ["| key | default | help |", "|---|---|---|"]
    for s in SETTINGS:
        default = yaml.safe_dump(s.default, default_flow_style=True).strip()
        default = default.removesuffix("...").strip() or '""'
        rows.append(f"| `{s.key}` | `{default}` | {s.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"
