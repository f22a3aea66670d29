"""Files lpemu writes for its user (a trace, a timeline, a JUnit report, a
campaign's campaign.json and summary.json), written whole or not at all.

The text goes to a new file beside the target first, and takes the target's
name only once it is complete: a write that fails (a full disk, a file-size
limit, an interruption) leaves the target as it was, whether it was absent
or a file the user had, never a torn one. Without replace, the name is taken
with link(), which fails if the name came to exist meanwhile: two runs
writing the same new file do not overwrite each other's; the second gets
FileExistsError.

A target that exists and is not a regular file (a device such as /dev/null
or /dev/stdout, a fifo) is written in place: renaming over it would remove
the device node. A symbolic link is followed, as open() follows it: its
target is the file written.
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path


@contextlib.contextmanager
def writing(path, *, replace: bool, binary: bool = False):
    """A file object to write path's new content to (text in UTF-8, or
    binary). On leaving the block without an exception the content becomes
    path: replacing the file there when replace is true, else only if no
    file has the name by then (FileExistsError otherwise). On an exception,
    path is left as it was. OSError when the file cannot be written."""
    path = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        with open(path, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            yield f
        return
    if mode is not None and not replace:
        raise FileExistsError(17, "File exists", str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
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


def write_text(path, text: str, *, replace: bool = True) -> None:
    """Write text to path whole or not at all (writing())."""
    with writing(path, replace=replace) as f:
        f.write(text)
