"""emu/runs/output.py: a file lpemu writes for its user is written whole or
not at all, and a new one never replaces a file made meanwhile."""
import os
import resource

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu.runs import output


class Stop(Exception):
    pass


@settings(max_examples=30, deadline=None)
@given(old=st.one_of(st.none(), st.binary(max_size=64)), new=st.binary(max_size=256),
       cut=st.integers(0, 256), replace=st.booleans())
def test_a_write_that_fails_leaves_the_file_as_it_was(tmp_path_factory, old, new, cut, replace):
    d = tmp_path_factory.mktemp("w")
    path = d / "out.json"
    if old is not None:
        path.write_bytes(old)
    with pytest.raises((Stop, FileExistsError)):
        with output.writing(path, replace=replace, binary=True) as f:
            f.write(new[:cut])
            raise Stop
    assert (path.read_bytes() if path.exists() else None) == old
    assert sorted(p.name for p in d.iterdir()) == (["out.json"] if old is not None else [])


def test_a_full_disk_midway_leaves_the_old_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("mine")
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(OSError) as exc:
            output.write_text(path, "x" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
    assert exc.value.strerror == "File too large"
    assert path.read_text() == "mine" and os.listdir(tmp_path) == ["t.json"]


def test_a_new_file_does_not_replace_one_made_meanwhile(tmp_path):
    path = tmp_path / "t.json"
    with pytest.raises(FileExistsError):
        with output.writing(path, replace=False) as f:
            f.write("ours")
            path.write_text("theirs")          # another run, between our check and our write
    assert path.read_text() == "theirs" and os.listdir(tmp_path) == ["t.json"]
    with output.writing(path, replace=True) as f:
        f.write("ours")
    assert path.read_text() == "ours"


def test_a_device_is_written_in_place_and_a_link_followed(tmp_path):
    with output.writing("/dev/null", replace=True) as f:
        f.write("x")
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    output.write_text(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"


def test_an_own_file_is_never_written_through_a_link_or_in_place(tmp_path):
    """own=True (a campaign's files in the --out the user named): a link
    there, or a fifo, is refused and left as it was, never followed (the
    user named the directory, not where a link in it points); a regular
    file is replaced whole, and a link planted beside it, where the new
    content is written first, is not followed either."""
    (tmp_path / "mine.txt").write_text("mine")
    (tmp_path / "link.json").symlink_to(tmp_path / "mine.txt")
    with pytest.raises(output.ForeignFile, match="a symbolic link") as e:
        output.write_text(tmp_path / "link.json", "new", own=True)
    assert isinstance(e.value, OSError)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(output.ForeignFile, match="not a regular file"):
        output.write_text(tmp_path / "fifo.json", "new", own=True)      # (opening it would block)
    assert (tmp_path / "mine.txt").read_text() == "mine" and (tmp_path / "link.json").is_symlink()
    (tmp_path / "own.json").write_text("old")
    for name in ("own.json.tmp", f".own.json.{os.getpid()}.tmp"):
        (tmp_path / name).symlink_to(tmp_path / "mine.txt")
    output.write_text(tmp_path / "own.json", "new", own=True)      # the name beside it taken: another one
    assert (tmp_path / "own.json").read_text() == "new" and (tmp_path / "mine.txt").read_text() == "mine"
    assert (tmp_path / f".own.json.{os.getpid()}.tmp").is_symlink()
    output.write_text(tmp_path / "fresh.json", "x", own=True)
    assert (tmp_path / "fresh.json").read_text() == "x"


def test_a_file_left_beside_by_a_killed_write_does_not_stop_the_next(tmp_path):
    """A write killed (SIGKILL) leaves its new file beside the target; a later
    process with the same pid (as in a container) writes beside it, under
    another name, and leaves it alone."""
    path = tmp_path / "t.json"
    stale = tmp_path / f".t.json.{os.getpid()}.tmp"
    stale.write_text("a killed write's")
    (tmp_path / f".t.json.{os.getpid()}.1.tmp").symlink_to(tmp_path / "mine.txt")      # not followed
    for replace in (False, True):
        output.write_text(path, f"new {replace}", replace=replace)
        assert path.read_text() == f"new {replace}"
    assert stale.read_text() == "a killed write's" and not (tmp_path / "mine.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["t.json", stale.name, f".t.json.{os.getpid()}.1.tmp"])
    for n in range(output.MAX_TRIES):
        name = f".t.json.{os.getpid()}{f'.{n}' if n else ''}.tmp"
        if not (tmp_path / name).exists() and not (tmp_path / name).is_symlink():
            (tmp_path / name).write_text("taken")
    with pytest.raises(OSError, match="names for its new content beside it are taken") as e:
        output.write_text(path, "newer")
    assert not isinstance(e.value, FileExistsError) and path.read_text() == "new True"


def test_a_link_to_a_pipe_is_written_in_place_through_it():
    """/dev/stdout piped is a link to /proc/self/fd/1, whose target pipe:[N]
    is no path: followed to its name, the write failed (No such file or
    directory); it is written through the link, in place."""
    r, w = os.pipe()
    try:
        output.write_text(f"/proc/self/fd/{w}", "through the pipe")
        assert os.read(r, 100) == b"through the pipe"
    finally:
        os.close(r)
        os.close(w)
