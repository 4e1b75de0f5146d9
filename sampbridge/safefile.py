"""Read files that a person or a peer put in front of sampbridge, without being led astray.

Only regular files are read: a symbolic link, a named pipe (FIFO), a device, a socket or a
directory is refused before a single byte is read, and nothing blocks (the file is opened with
``O_NONBLOCK``).  A size cap is checked twice, on the size the file claims (a 3 GB sparse file
is refused at once) and on the bytes actually read (a file that grows while it is read).  With a
``root``, the file must lie inside that folder: every folder on the way is opened one by one
without following a symbolic link, and ``..`` is refused.

Errors are :class:`FileRefused`, one sentence that names the file and never quotes its content.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .errors import SampBridgeError

__all__ = ["FileRefused", "FileMissing", "read_regular", "check_regular", "copy_regular",
           "ensure_private_dir"]

_CHUNK = 1 << 20
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)
_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class FileRefused(SampBridgeError):
    """A file that is not read; the message is one sentence that names it."""


class FileMissing(FileRefused):
    """The file does not exist (any more)."""


def _where(root: Path | None) -> str:
    return "only regular files inside the folder are read" if root is not None \
        else "only regular files are read"


def _kind(mode: int) -> str | None:
    for test, text in _KINDS:
        if test(mode):
            return text
    return None if stat.S_ISREG(mode) else "not a regular file"


def _os_error(label: str, exc: OSError, root: Path | None) -> FileRefused:
    if exc.errno == errno.ENOENT:
        return FileMissing(f"{label} does not exist")
    if exc.errno == errno.ELOOP:
        return FileRefused(f"{label} is a symbolic link; {_where(root)}")
    if exc.errno == errno.ENOTDIR:
        return FileRefused(f"{label} lies under something that is not a folder (or is a "
                           f"symbolic link to one); {_where(root)}")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FileRefused(f"{label} cannot be read: permission denied")
    return FileRefused(f"{label} cannot be read: {exc.strerror or 'input/output error'}")


def _parts_inside(path: Path, root: Path, label: str) -> tuple[str, ...]:
    """Return the path's parts below ``root``; refuse ``..`` and anything outside."""
    absolute = Path(os.path.abspath(path)) if ".." not in path.parts else None
    if absolute is None:
        raise FileRefused(f"{label} goes up out of its folder with '..'; {_where(root)}")
    try:
        parts = absolute.relative_to(root).parts
    except ValueError:
        raise FileRefused(f"{label} is outside the folder {root}; {_where(root)}") from None
    if not parts:
        raise FileRefused(f"{label} is the folder itself, not a file in it")
    return parts


def _open_dir_chain(root: Path, parts: tuple[str, ...], label: str) -> int:
    """Open ``root`` and then each folder in ``parts`` without following links; return the fd."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            nxt = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileRefused(f"{label} lies in a folder that is a symbolic link (or not a "
                              f"folder); {_where(root)}") from None
        raise _os_error(label, exc, root) from None
    return fd


def _open(path: Path, max_bytes: int, root: Path | None, label: str | None,
          follow_symlinks: bool = False, cap_name: str | None = None) -> tuple[int, str]:
    """Open ``path`` as a regular file within the cap; return the fd and the label."""
    path = Path(path)
    label = label or path.name or str(path)
    dir_fd = None
    name = str(path)
    try:
        if root is not None:
            root = Path(root)
            parts = _parts_inside(path, root, label)
            dir_fd = _open_dir_chain(root, parts[:-1], label)
            name = parts[-1]
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=follow_symlinks)
        except OSError as exc:
            raise _os_error(label, exc, root) from None
        if stat.S_ISLNK(st.st_mode):
            raise FileRefused(f"{label} is a symbolic link; {_where(root)}")
        kind = _kind(st.st_mode)
        if kind is not None:        # refused before it is opened: a device is never touched
            raise FileRefused(f"{label} is {kind}, not a regular file; {_where(root)}")
        flags = _FLAGS | (0 if follow_symlinks else os.O_NOFOLLOW)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)
        except OSError as exc:
            raise _os_error(label, exc, root) from None
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    try:
        _check_open(fd, st, max_bytes, label, root, cap_name)
    except BaseException:
        os.close(fd)
        raise
    return fd, label


def _check_open(fd: int, before: os.stat_result, max_bytes: int, label: str,
                root: Path | None, cap_name: str | None) -> None:
    st = os.fstat(fd)
    kind = _kind(st.st_mode)
    if kind is not None:
        raise FileRefused(f"{label} is {kind}, not a regular file; {_where(root)}")
    if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        raise FileRefused(f"{label} was replaced while it was opened; it is read next time")
    if st.st_size > max_bytes:
        raise FileRefused(f"{label} is {st.st_size:,} bytes, over {_cap(max_bytes, cap_name)}")


def _cap(max_bytes: int, cap_name: str | None) -> str:
    return f"the cap of {max_bytes:,} bytes" + (f" ({cap_name})" if cap_name else "")


def _chunks(fd: int, max_bytes: int, label: str,  # a generator of bytes
            cap_name: str | None):
    total = 0
    while True:
        try:
            chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - total))
        except OSError as exc:
            raise FileRefused(f"{label} cannot be read: {exc.strerror or 'read error'}") from None
        if not chunk:
            return
        total += len(chunk)
        if total > max_bytes:
            raise FileRefused(f"{label} grew over {_cap(max_bytes, cap_name)} while it was "
                              "read")
        yield chunk


def read_regular(path: Path | str, max_bytes: int, root: Path | str | None = None, *,
                 label: str | None = None, follow_symlinks: bool = False,
                 cap_name: str | None = None) -> bytes:
    """Return the content of a regular file, refusing links, special files and big files.

    Parameters
    ----------
    path : Path or str
        The file.
    max_bytes : int
        The cap, checked on the size the file claims and on the bytes read.
    root : Path or str, optional
        A resolved folder the file must lie in, reached without symbolic links or ``..``.
    label : str, optional
        How the file is named in errors (default: its name).
    cap_name : str, optional
        The setting that holds the cap, named in the error (``tables.max_bytes``).
    follow_symlinks : bool
        Follow a symbolic link in the last part (for a file named on the command line).

    Returns
    -------
    bytes
        The content, at most ``max_bytes`` long.

    Raises
    ------
    FileRefused
        One sentence naming the file; :class:`FileMissing` when it does not exist.
    """
    fd, label = _open(Path(path), max_bytes, Path(root) if root is not None else None, label,
                      follow_symlinks, cap_name)
    try:
        return b"".join(_chunks(fd, max_bytes, label, cap_name))
    finally:
        os.close(fd)


def check_regular(path: Path | str, max_bytes: int, root: Path | str | None = None, *,
                  label: str | None = None, cap_name: str | None = None) -> None:
    """Check, without reading, that :func:`read_regular` would accept the file.

    Raises
    ------
    FileRefused
        The sentence :func:`read_regular` would give.
    """
    fd, _ = _open(Path(path), max_bytes, Path(root) if root is not None else None, label,
                  cap_name=cap_name)
    os.close(fd)


def copy_regular(path: Path | str, dest: Path | str, max_bytes: int,
                 root: Path | str | None = None, *, label: str | None = None,
                 cap_name: str | None = None) -> int:
    """Copy a regular file into a new private (0600) ``dest``, streaming within the cap.

    Returns
    -------
    int
        The bytes copied.

    Raises
    ------
    FileRefused
        As :func:`read_regular`; ``dest`` is removed again then.
    FileExistsError
        If ``dest`` exists already.
    """
    fd, label = _open(Path(path), max_bytes, Path(root) if root is not None else None, label,
                      cap_name=cap_name)
    total = 0
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for chunk in _chunks(fd, max_bytes, label, cap_name):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view):]
                total += len(chunk)
        except BaseException:
            os.close(out)
            os.unlink(dest)
            raise
        os.close(out)
    finally:
        os.close(fd)
    return total


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents as private folders (0700); return ``path``.

    Only the folders made here are made private: a folder that exists keeps its mode, since
    it may be the user's (a shared 1777 folder, say).

    Raises
    ------
    OSError
        When a folder cannot be made, or ``path`` exists and is not a folder.
    """
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue                    # made meanwhile by someone else: not ours to change
        os.chmod(d, 0o700)              # exactly 0700, whatever the umask
    path.mkdir(mode=0o700, exist_ok=True)   # raises when path is a file
    return path
