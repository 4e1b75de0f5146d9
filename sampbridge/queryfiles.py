"""Query files: parse ``*.adql``/``*.sql``, ``*.yaml``/``*.yml`` and table files into requests.

Every problem becomes a :class:`QueryFileError` with a sentence a person can act on (the YAML
line and column, the unknown key, the bad value).  No SAMP and no I/O beyond reading the file.

Files are read through :mod:`sampbridge.safefile`: only regular files, no symbolic link followed,
never blocking, within a size cap (:data:`MAX_QUERY_BYTES` for query text, ``tables.max_bytes``
for tables); a ``match: {table: ...}`` path must lie inside the query file's folder.  YAML
aliases, tags and complex keys are refused with their line and column.  No error quotes a file's
content beyond the short value it is about.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import MAX_YAML_BYTES, Config, YAMLRefused, compose_strict, plain_value
from .model import (
    ConeRequest,
    MatchRequest,
    RequestError,
    SiapRequest,
    TapRequest,
    match_options,
    quoted,
)
from .safefile import FileMissing, FileRefused, check_regular, read_regular

__all__ = ["QueryFileError", "FileRequest", "parse_query_file",
           "query_bytes", "QUERY_SUFFIXES", "TABLE_SUFFIXES", "MAX_QUERY_BYTES", "is_candidate"]

#: Largest ADQL or YAML query file read, in bytes (1 MB; a real one is a few kB).
MAX_QUERY_BYTES = MAX_YAML_BYTES

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


#: Every request a query file may hold.
Request = ConeRequest | SiapRequest | TapRequest | MatchRequest


@dataclass
class FileRequest:
    """One runnable request from a query file, with its delivery options."""

    request: Request
    kind: str
    send_to: list[str] | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def is_candidate(path: Path) -> bool:
    """Tell whether a file name may be a query (not hidden, temporary or another type)."""
    name = path.name
    return (not _TEMP.search(name)) and path.suffix.lower() in QUERY_SUFFIXES


def _brief(exc: BaseException, limit: int = 240) -> str:
    """Return an error's text cut to ``limit`` characters (it may list a user's many keys)."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit - 3] + "..."


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
            raise QueryFileError(f"{path.name}, line {lineno}: unknown option {quoted(key)} "
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
        raise QueryFileError(f"{path.name}: {_brief(exc)}") from None
    send = _send_to(opts["send_to"], path.name) if "send_to" in opts else None
    return [FileRequest(req, "tap", send, req.name)]


_COMMON = ("send_to", "name")


def _yaml_error(path: Path, node: yaml.Node | None, text: str) -> QueryFileError:
    if node is None:
        return QueryFileError(f"{path.name}: {text}")
    m = node.start_mark
    return QueryFileError(f"{path.name}, line {m.line + 1}, column {m.column + 1}: {text}")


def _plain(path: Path, node: yaml.Node) -> Any:
    try:
        return plain_value(node)
    except YAMLRefused as exc:
        raise QueryFileError(f"{path.name}, line {exc.line}, column {exc.column}: "
                             f"{exc.problem}") from None


def _table_path(path: Path, table: str, root: Path, cfg: Config) -> Path:
    """Return the table's path, which must be a regular file inside ``root``."""
    label = quoted(table)
    given = Path(table)
    if ".." in given.parts:
        raise RequestError(f"the table {label} goes up out of the folder with '..'; only files "
                           "inside the query folder are read")
    tpath = Path(os.path.abspath(given if given.is_absolute() else path.parent / given))
    try:
        tpath.relative_to(root)
    except ValueError:
        raise RequestError(f"the table {label} is outside the query folder; put it in the folder "
                           "(a subfolder such as tables/ keeps it from running on its own)"
                           ) from None
    try:
        check_regular(tpath, cfg["tables.max_bytes"], root, label=f"the table {label}",
                      cap_name="tables.max_bytes")
    except FileMissing:
        raise RequestError(f"cannot read the table file {label}: it does not exist") from None
    except FileRefused as exc:
        raise RequestError(str(exc)) from None
    return tpath


@dataclass(frozen=True)
class _Origin:
    """Where a YAML request came from: its file, the folder it must stay in, its ``name``."""

    path: Path
    root: Path
    name: str | None


def _cone(params: dict[str, Any], cfg: Config, at: _Origin) -> ConeRequest:
    return ConeRequest.from_params(params, cfg)


def _siap(params: dict[str, Any], cfg: Config, at: _Origin) -> SiapRequest:
    return SiapRequest.from_params(params, cfg)


def _tap(params: dict[str, Any], cfg: Config, at: _Origin) -> TapRequest:
    if at.name and "name" not in params:
        params["name"] = at.name
    return TapRequest.from_params(params, cfg)


def _match(params: dict[str, Any], cfg: Config, at: _Origin) -> MatchRequest:
    unknown = sorted(set(params) - {"table", "radius", "mode"})
    if unknown:
        raise RequestError(f"unknown parameter for a match: {quoted(', '.join(unknown))} "
                           "(allowed: table, radius, mode)")
    table = params.get("table")
    if not isinstance(table, str) or not table.strip():
        raise RequestError("'table' is missing: give the table file to match")
    # the same check of radius and mode as a SAMP match's, before the table is looked for
    radius, mode = match_options(params)
    tpath = _table_path(at.path, table, at.root, cfg)
    return MatchRequest(tpath, at.name or tpath.stem, radius=radius, mode=mode, root=at.root)


#: The request a YAML key makes, by kind: a new kind is one entry here and one builder.
_BUILDERS: dict[str, Callable[[dict[str, Any], Config, _Origin], Request]] = {
    "cone": _cone, "siap": _siap, "tap": _tap, "match": _match}
_KINDS = tuple(_BUILDERS)


def _one_yaml(path: Path, node: yaml.Node, cfg: Config, where: str,
              root: Path) -> FileRequest:
    if not isinstance(node, yaml.MappingNode):
        raise _yaml_error(path, node, f"{where} must be a mapping with one of "
                          f"{', '.join(_KINDS)}")
    keys = {str(k.value): (k, v) for k, v in node.value}
    for key, (knode, _) in keys.items():
        if key not in _KINDS and key not in _COMMON:
            raise _yaml_error(path, knode, f"unknown key {quoted(key)} (expected one of "
                              f"{', '.join(_KINDS)}, plus optional {', '.join(_COMMON)})")
    kinds = [k for k in keys if k in _KINDS]
    if len(kinds) != 1:
        raise _yaml_error(path, node, f"{where} must have exactly one of {', '.join(_KINDS)} "
                          f"(found {', '.join(kinds) or 'none'})")
    kind = kinds[0]
    knode, vnode = keys[kind]
    if not isinstance(vnode, yaml.MappingNode):
        raise _yaml_error(path, vnode, f"'{kind}' must be a mapping of parameters")
    params = _plain(path, vnode)
    name = _plain(path, keys["name"][1]) if "name" in keys else None
    if name is not None and not isinstance(name, str):
        raise _yaml_error(path, keys["name"][1], "name must be text")
    send = _send_to(_plain(path, keys["send_to"][1]), f"{path.name}, line "
                    f"{keys['send_to'][0].start_mark.line + 1}") if "send_to" in keys else None
    params = {str(k): (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
              for k, v in params.items()}
    try:
        req = _BUILDERS[kind](params, cfg, _Origin(path, root, name))
    except (RequestError, ValueError) as exc:
        raise _yaml_error(path, vnode, f"{kind}: {_brief(exc)}") from None
    return FileRequest(req, kind, send, name)


def _parse_yaml(path: Path, text: str, cfg: Config, folder: Path) -> list[FileRequest]:
    try:
        root = compose_strict(text, "query files")
    except YAMLRefused as exc:
        where = f", line {exc.line}, column {exc.column}" if exc.line else ""
        problem = f"not valid YAML: {exc.problem}" if exc.syntax else exc.problem
        raise QueryFileError(f"{path.name}{where}: {problem}") from None
    if root is None:
        raise QueryFileError(f"{path.name}: the file is empty")
    if isinstance(root, yaml.SequenceNode):
        if not root.value:
            raise _yaml_error(path, root, "the list of requests is empty")
        return [_one_yaml(path, n, cfg, f"request {i + 1}", folder)
                for i, n in enumerate(root.value)]
    return [_one_yaml(path, root, cfg, "the request", folder)]


def _cap_of(path: Path, cfg: Config) -> tuple[int, str]:
    if path.suffix.lower() in TABLE_SUFFIXES:
        return cfg["tables.max_bytes"], "tables.max_bytes"
    return MAX_QUERY_BYTES, "the limit for query files"


def query_bytes(path: Path, cfg: Config, root: Path | None = None) -> bytes:
    """Return the bytes that identify a query file (for a journal), never blocking.

    The content when the file is a regular file within its cap; otherwise the sentence of the
    refusal, so a refused file still gets a stable identity and :func:`parse_query_file` then
    reports that same refusal.

    Raises
    ------
    FileNotFoundError
        If the file does not exist (any more).
    """
    cap, cap_name = _cap_of(path, cfg)
    try:
        return read_regular(path, cap, root, cap_name=cap_name)
    except FileMissing:
        raise FileNotFoundError(path.name) from None
    except FileRefused as exc:
        return f"refused: {exc}".encode()


def parse_query_file(path: Path, cfg: Config, root: Path | None = None) -> list[FileRequest]:
    """Read a query file and return its requests.

    Parameters
    ----------
    path : Path
        The query file: ADQL, YAML, or a table to match.
    cfg : Config
        Settings (``tables.max_bytes`` caps tables).
    root : Path, optional
        The folder that the file and any ``match: {table: ...}`` must lie in (default: the
        file's own folder, resolved).

    Raises
    ------
    QueryFileError
        With the file name, and the line and column where YAML says so.
    """
    suffix = path.suffix.lower()
    root = Path(root) if root is not None else Path(os.path.abspath(path.parent))
    cap, cap_name = _cap_of(path, cfg)
    if suffix in TABLE_SUFFIXES:
        try:
            check_regular(path, cap, root, cap_name=cap_name)
        except FileRefused as exc:
            raise QueryFileError(str(exc)) from None
        return [FileRequest(MatchRequest(path, path.stem, root=root), "match", None,
                            path.stem)]
    try:
        raw = read_regular(path, cap, root, cap_name=cap_name)
    except FileRefused as exc:
        raise QueryFileError(str(exc)) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise QueryFileError(f"{path.name}: not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise QueryFileError(f"{path.name}: binary data, not a text query")
    if suffix in ADQL_SUFFIXES:
        return _parse_adql(path, text, cfg)
    if suffix in YAML_SUFFIXES:
        return _parse_yaml(path, text, cfg, root)
    raise QueryFileError(f"{path.name}: unknown kind of file ({suffix})")
