r"""Crash-safe file operations: atomic replacement, fsync, one writer per directory.

A file is replaced atomically by writing a temporary file beside it, ``fsync``-ing it and
``os.replace``-ing it onto the name, then ``fsync``-ing the directory (so the rename itself
survives a power cut). A process killed at any point leaves either the old or the new file
under the name, plus possibly a temporary ``.NAME.<random>`` that the owner cleans up later.

:func:`directory_lock` serialises writers of one directory (``flock`` on the directory
itself, so no lock file is left behind); cleaning up a dead writer's temporaries is only safe
while holding it, or a live writer's files would be taken for stale ones.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def default_mode(directory: bool = False) -> int:
    """The permissions a new file (or directory) gets under the process umask: safetensors and
    ``tempfile`` create private (0600 / 0700) ones, which other users could not read."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def fsync_path(path: str | Path) -> None:
    """Flush ``path`` (a file, or a directory: its entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_prefix(name: str) -> str:
    """The prefix of every temporary written for file ``name`` (``.NAME.``)."""
    return f".{name}."


def write_atomically(target: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` for a temporary file beside ``target``, then fsync it and rename
    it onto ``target`` (readers never see a half-written file; a failed or killed write leaves
    ``target`` as it was)."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, default_mode())
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def write_new_file(target: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``target``, which must not exist yet, and fsync it (for files whose name
    is unique to one save, so no reader can see them half-written before they are named)."""
    target = Path(target)
    with open(target, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(target, default_mode())
    fsync_path(target.parent)
    return target


@contextlib.contextmanager
def directory_lock(path: str | Path, wait: bool = True):
    """Hold an exclusive ``flock`` on directory ``path`` for the ``with`` block; yields True.
    With ``wait=False`` it yields False at once when another process holds it. Never nest
    two locks on the same directory in one process (flock would wait on itself)."""
    import fcntl  # POSIX only, like the lock itself

    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def remove_tree(path: Path, trash: Path) -> None:
    """Delete directory ``path`` by first renaming it to ``trash``, so that a kill during the
    deletion never leaves a half-deleted tree under a name that means "complete"."""
    import shutil

    if trash.exists():
        shutil.rmtree(trash)
    if path.exists():
        os.replace(path, trash)
        fsync_path(trash.parent)
        shutil.rmtree(trash)


def _siblings(parent: Path, name: str) -> tuple[Path, Path, Path, Path]:
    """``(final, tmp, old, trash)`` of directory ``parent/name``."""
    return parent / name, parent / f".{name}.tmp", parent / f".{name}.old", parent / f".{name}.trash"


def settle_directory(parent: str | Path, name: str, marker: str) -> bool:
    """Finish or undo a :func:`replace_directory` of ``parent/name`` that was killed; True when a
    complete directory (one holding ``marker``) is then at ``parent/name``.

    The newest complete copy wins: the temporary (it became complete after the one in place),
    then the one in place, then the previous one moved aside. Complete copies are only deleted
    once a newer complete one is in place. Hold :func:`directory_lock` on ``parent``."""
    parent = Path(parent)
    final, tmp, old, trash = _siblings(parent, name)
    remove_tree(trash, trash)
    winner = next((d for d in (tmp, final, old) if (d / marker).is_file()), None)
    if winner is not None and winner != final:
        remove_tree(final, trash)
        os.replace(winner, final)
        fsync_path(parent)
    for leftover in (tmp, old):
        remove_tree(leftover, trash)
    return (final / marker).is_file()


def replace_directory(parent: str | Path, name: str, marker: str, fill) -> Path:
    """Replace directory ``parent/name`` by a new one: ``fill(tmp)`` writes it in a temporary
    directory, writing file ``marker`` last (atomically) to say it is complete; then the old one
    is moved aside, the new one renamed in, the old one deleted. Killed at any point, the next
    :func:`settle_directory` restores the newest complete copy. Hold :func:`directory_lock` on
    ``parent``."""
    parent = Path(parent)
    final, tmp, old, trash = _siblings(parent, name)
    settle_directory(parent, name, marker)
    tmp.mkdir()
    fill(tmp)
    if not (tmp / marker).is_file():
        raise RuntimeError(f"replace_directory: fill() did not write {marker}")
    fsync_path(tmp)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_path(parent)
    remove_tree(old, trash)
    return final
