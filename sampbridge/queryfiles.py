"""Query files: parse ``*.adql``/``*.sql``, ``*.yaml``/``*.yml`` and table files into requests.

Every problem becomes a :class:`QueryFileError` with a sentence a person can act on (the YAML
line and column, the unknown key, the bad value).  No SAMP and no I/O beyond reading the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import Config
from .model import ConeRequest, RequestError, SiapRequest, TapRequest

__all__ = ["QueryFileError", "MatchFileRequest", "FileRequest", "parse_query_file",
           "QUERY_SUFFIXES", "TABLE_SUFFIXES", "is_candidate"]

ADQL_SUFFIXES = (".adql", ".sql")
YAML_SUFFIXES = (".yaml", ".yml")
TABLE_SUFFIXES = (".vot", ".xml", ".fits", ".csv")
QUERY_SUFFIXES = ADQL_SUFFIXES + YAML_SUFFIXES + TABLE_SUFFIXES
_ADQL_OPTIONS = ("name", "maxrec", "send_to")
_OPTION = re.compile(r"^--\s*([A-Za-z_][A-Za-z0-9_-]*)\s*:\s*(.*?)\s*$")
_TEMP = re.compile(r"(~$|\.sw[a-p]$|\.tmp$|\.temp$|\.part$|\.crdownload$|\.partial$|^#.*#$|"
                   r"^\.|^4913$|\.bak$|\.orig$)", re.IGNORECASE)


class QueryFileError(RequestError):
    """A query file that cannot run; the message says where and why."""


@dataclass(frozen=True)
class MatchFileRequest:
    """Match a table file against the CSC."""

    table: Path
    name: str
    radius: float | None = None
    mode: str | None = None


@dataclass
class FileRequest:
    """One runnable request from a query file, with its delivery options."""

    request: ConeRequest | SiapRequest | TapRequest | MatchFileRequest
    kind: str
    send_to: list[str] | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_candidate(path: Path) -> bool:
    """Tell whether a file name may be a query (not hidden, temporary or another type)."""
    name = path.name
    return (not _TEMP.search(name)) and path.suffix.lower() in QUERY_SUFFIXES


def _send_to(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise QueryFileError(f"{where}: send_to must be a client name or a list of names")
    if not items:
        raise QueryFileError(f"{where}: send_to is empty")
    return items


def _parse_adql(path: Path, text: str, cfg: Config) -> list[FileRequest]:
    opts: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        m = _OPTION.match(stripped)
        if not m:
            continue
        key, value = m.group(1).lower(), m.group(2)
        if key not in _ADQL_OPTIONS:
            raise QueryFileError(f"{path.name}, line {lineno}: unknown option '{key}' "
                                 f"(known: {', '.join(_ADQL_OPTIONS)}); write other comments "
                                 "without a colon after the first word")
        opts[key] = value
    body = "\n".join(line for line in text.splitlines()
                     if not _OPTION.match(line.strip())).strip()
    if not body or all(ln.strip().startswith("--") or not ln.strip()
                       for ln in body.splitlines()):
        raise QueryFileError(f"{path.name}: the file holds no ADQL query")
    params: dict[str, Any] = {"adql": body, "name": opts.get("name") or path.stem}
    if "maxrec" in opts:
        params["maxrec"] = opts["maxrec"]
    try:
        req = TapRequest.from_params(params, cfg)
    except RequestError as exc:
        raise QueryFileError(f"{path.name}: {exc}") from None
    send = _send_to(opts["send_to"], path.name) if "send_to" in opts else None
    return [FileRequest(req, "tap", send, req.name)]


_KINDS = ("cone", "siap", "tap", "match")
_COMMON = ("send_to", "name")


def _yaml_error(path: Path, node: yaml.Node | None, text: str) -> QueryFileError:
    if node is None:
        return QueryFileError(f"{path.name}: {text}")
    m = node.start_mark
    return QueryFileError(f"{path.name}, line {m.line + 1}, column {m.column + 1}: {text}")


def _plain(node: yaml.Node) -> Any:
    return yaml.safe_load(yaml.serialize(node))


def _one_yaml(path: Path, node: yaml.Node, cfg: Config, where: str) -> FileRequest:
    if not isinstance(node, yaml.MappingNode):
        raise _yaml_error(path, node, f"{where} must be a mapping with one of "
                          f"{', '.join(_KINDS)}")
    keys = {str(k.value): (k, v) for k, v in node.value}
    for name, (knode, _) in keys.items():
        if name not in _KINDS and name not in _COMMON:
            raise _yaml_error(path, knode, f"unknown key '{name}' (expected one of "
                              f"{', '.join(_KINDS)}, plus optional {', '.join(_COMMON)})")
    kinds = [k for k in keys if k in _KINDS]
    if len(kinds) != 1:
        raise _yaml_error(path, node, f"{where} must have exactly one of {', '.join(_KINDS)} "
                          f"(found {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    knode, vnode = keys[kind]
    if not isinstance(vnode, yaml.MappingNode):
        raise _yaml_error(path, vnode, f"'{kind}' must be a mapping of parameters")
    params = _plain(vnode)
    name = _plain(keys["name"][1]) if "name" in keys else None
    if name is not None and not isinstance(name, str):
        raise _yaml_error(path, keys["name"][1], "name must be text")
    send = _send_to(_plain(keys["send_to"][1]), f"{path.name}, line "
                    f"{keys['send_to'][0].start_mark.line + 1}") if "send_to" in keys else None
    params = {str(k): (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
              for k, v in params.items()}
    try:
        if kind == "cone":
            req: Any = ConeRequest.from_params(params, cfg)
        elif kind == "siap":
            req = SiapRequest.from_params(params, cfg)
        elif kind == "tap":
            if name and "name" not in params:
                params["name"] = name
            req = TapRequest.from_params(params, cfg)
        else:
            unknown = sorted(set(params) - {"table", "radius", "mode"})
            if unknown:
                raise RequestError(f"unknown parameter for a match: {', '.join(unknown)} "
                                   "(allowed: table, radius, mode)")
            table = params.get("table")
            if not isinstance(table, str) or not table.strip():
                raise RequestError("'table' is missing: give the table file to match")
            mode = params.get("mode")
            if mode not in (None, "best", "all"):
                raise RequestError(f"'mode' must be best or all, not {mode!r}")
            radius = float(params["radius"]) if params.get("radius") is not None else None
            tpath = (path.parent / table).resolve() if not Path(table).is_absolute() \
                else Path(table)
            req = MatchFileRequest(tpath, name or Path(table).stem, radius, mode)
    except (RequestError, ValueError) as exc:
        raise _yaml_error(path, vnode, f"{kind}: {exc}") from None
    return FileRequest(req, kind, send, name)


def _parse_yaml(path: Path, text: str, cfg: Config) -> list[FileRequest]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        where = f", line {m.line + 1}, column {m.column + 1}" if m else ""
        raise QueryFileError(f"{path.name}{where}: not valid YAML: {exc.problem}") from None
    if root is None:
        raise QueryFileError(f"{path.name}: the file is empty")
    if isinstance(root, yaml.SequenceNode):
        if not root.value:
            raise _yaml_error(path, root, "the list of requests is empty")
        return [_one_yaml(path, n, cfg, f"request {i + 1}") for i, n in enumerate(root.value)]
    return [_one_yaml(path, root, cfg, "the request")]


def parse_query_file(path: Path, cfg: Config) -> list[FileRequest]:
    """Read a query file and return its requests.

    Raises
    ------
    QueryFileError
        With the file name, and the line and column where YAML says so.
    """
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return [FileRequest(MatchFileRequest(path, path.stem), "match", None, path.stem)]
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise QueryFileError(f"{path.name}: cannot read the file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QueryFileError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise QueryFileError(f"{path.name}: binary data, not a text query")
    if suffix in ADQL_SUFFIXES:
        return _parse_adql(path, text, cfg)
    if suffix in YAML_SUFFIXES:
        return _parse_yaml(path, text, cfg)
    raise QueryFileError(f"{path.name}: unknown kind of file ({suffix})")
