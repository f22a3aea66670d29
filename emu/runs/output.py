"""Files lpemu writes for its user (a trace, a timeline, a JUnit report, a
campaign's campaign.json and summary.json), written whole or not at all.

The text goes to a new file beside the target first (_new_beside), and takes
the target's name only once it is complete: a write that fails (a full disk, a file-size
limit, an interruption) leaves the target as it was, whether it was absent
or a file the user had, never a torn one. Without replace, the name is taken
with link(), which fails if the name came to exist meanwhile: two runs
writing the same new file do not overwrite each other's; the second gets
FileExistsError.

A path the user named (--trace F) that exists and is not a regular file (a
device such as /dev/null or /dev/stdout, a fifo) is written in place:
renaming over it would remove the device node. A symbolic link there is
followed, as open() follows it: its target is the file written.

A file of lpemu's own in a directory the user named (own: a campaign's
campaign.json, summary.json, runs.jsonl) is another matter: the user named
the directory, not what a link in it points at. A symbolic link there, or
anything but a regular file, is someone else's: it is refused (ForeignFile),
never followed nor written in place. (The new content takes the name by a
rename, which replaces a link that came meanwhile rather than writing
through it; the file beside it is new, O_EXCL, so no link placed there is
followed either.)
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class ForeignFile(OSError):
    """writing(own=True) found a symbolic link, or no regular file, where
    lpemu's own file goes (errno ELOOP for a link, EEXIST otherwise)."""


@contextlib.contextmanager
def writing(path, *, replace: bool, binary: bool = False, own: bool = False):
    """A file object to write path's new content to (text in UTF-8, or
    binary). On leaving the block without an exception the content becomes
    path: replacing the file there when replace is true, else only if no
    file has the name by then (FileExistsError otherwise). On an exception,
    path is left as it was. With own, path is one of lpemu's own files (see
    the module doc): ForeignFile when a link or no regular file is there.
    OSError when the file cannot be written."""
    if own:
        path = Path(path)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            link = stat.S_ISLNK(mode)
            raise ForeignFile(errno.ELOOP if link else errno.EEXIST,
                              "a symbolic link" if link else "not a regular file", str(path))
    else:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            mode = None
        # a link to a device or a pipe is written in place through the link:
        # /dev/stdout's target, /proc/self/fd/1's pipe:[N], is no path
        if mode is None or stat.S_ISREG(mode):
            path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
        return
    if mode is not None and not replace:
        raise FileExistsError(17, "File exists", str(path))
    tmp, fd = _new_beside(path)
    try:
        with open(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise
            except OSError:             # a file system without hard links
                if os.path.lexists(path):
                    raise FileExistsError(17, "File exists", str(path)) from None
                os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


#: names _new_beside tries before it gives up (each one taken: by files of
#: runs killed before they could remove theirs, or of other processes)
MAX_TRIES = 100


def _new_beside(path: Path) -> tuple[Path, int]:
    """(name, descriptor) of a new file beside path, created here (O_EXCL:
    no file or link there is opened): .NAME.PID.tmp, or .NAME.PID.N.tmp when
    that is taken. A run killed (SIGKILL) while it wrote leaves its file
    behind, and a process of the same pid (a container's, where every run
    may have the same one) found its one name taken for good. What is
    there is left alone: it may be another process's, writing now."""
    for n in range(MAX_TRIES):
        tmp = path.with_name(f".{path.name}.{os.getpid()}{f'.{n}' if n else ''}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
    # not FileExistsError, which says that path itself came to exist
    raise OSError(f"{MAX_TRIES} names for its new content beside it are taken (.{path.name}.{os.getpid()}*.tmp): "
                  f"remove them")


def write_text(path, text: str, *, replace: bool = True, own: bool = False) -> None:
    """Write text to path whole or not at all (writing())."""
    with writing(path, replace=replace, own=own) as f:
        f.write(text)
