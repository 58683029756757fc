"""Atomic file output: the one place diffusekit writes a file.

Every file is written to a temporary file in the same folder (``.NAME.XXXX.tmp``), flushed and
``fsync``-ed, given the mode an ordinary ``open(path, "w")`` would give, and moved over ``path`` with
``os.replace`` (atomic on POSIX and Windows); the folder is then fsync-ed so the rename survives a crash.
A reader therefore sees the old file or the new one, never a mix. A process killed with SIGKILL can
leave its temporary file behind; :func:`sweep_temp_files` removes such orphans.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "check_output_dir",
           "check_output_file", "default_file_mode", "sweep_temp_files", "temp_file_prefix"]


def default_file_mode() -> int:
    """0o666 less the process umask: the mode an ordinary ``open(path, "w")`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(path: Path) -> None:
    """Persist a rename by fsync-ing its directory (not possible on every platform)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_file_prefix(name: str) -> str:
    """The prefix of the temporary files :func:`atomic_write` uses for a file called ``name``."""
    return f".{name}."


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, make_parents: bool = True) -> None:
    """Write ``path`` atomically; ``write(tmp_path)`` produces the content in a temporary file.

    On any error (or KeyboardInterrupt) the temporary file is removed and the old ``path`` is untouched.
    """
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_file_prefix(path.name), suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating its parent folders)."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON; numpy scalars and one-element tensors become numbers."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if type(o).__module__.startswith("torch") and hasattr(o, "numel") and o.numel() == 1:
        return o.item()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def sweep_temp_files(folder: str | os.PathLike, names) -> list[Path]:
    """Remove the temporary files :func:`atomic_write` left for ``names`` in ``folder`` (a killed writer's).

    Only call this when no other process writes these files (e.g. at the start of a training run in its
    own folder). Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for tmp in folder.glob(f"{temp_file_prefix(name)}*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


# ------------------------------------------------------------------------ output locations, checked first


def _writable_folder(folder: Path, what: str, path: Path) -> None:
    from .errors import UserError

    if not folder.is_dir():
        raise UserError(f"{what} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: folder {folder} is not writable")


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False, what: str = "--out") -> Path:
    """Check, before any work, that a file can be written at ``path``; raise a one-line UserError if not.

    Refused: ``path`` is a folder; ``path`` exists and ``overwrite`` is false; the parent folder is missing,
    is not a folder or is not writable.
    """
    from .errors import UserError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UserError(f"{what} {path} already exists; pass --overwrite to replace it or choose another name")
    parent = path.parent
    if not parent.exists():
        raise UserError(f"{what} {path}: folder {parent} does not exist; create it first")
    _writable_folder(parent, what, path)
    return path


def check_output_dir(path: str | os.PathLike, *, what: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be made) a writable folder; one-line UserError if not.

    A missing ``path`` is fine when its nearest existing ancestor is a writable folder (it is created later).
    """
    from .errors import UserError

    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} exists and is not a folder")
        _writable_folder(path, what, path)
        return path
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {path}: {ancestor} is a file, not a folder")
    _writable_folder(ancestor, what, path)
    return path
