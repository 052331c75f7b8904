"""safe_files on real files: the path walk, the no-follow opens and the atomic replace.
(End to end, through the CLI and the kernel: tests/netns/test_trust.py.)"""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from vnetfw import safe_files
from vnetfw.safe_files import Unsafe

ROOT = os.geteuid() == 0
NOBODY = 65534
as_root = pytest.mark.skipif(not ROOT, reason="making another user's files needs root")


def test_a_checked_path_comes_back_resolved_through_relative_and_absolute_links(tmp_path):
    (tmp_path / "real" / "dir").mkdir(parents=True)
    (tmp_path / "rel").symlink_to("real/dir/../dir")
    (tmp_path / "abs").symlink_to(tmp_path / "rel")
    assert safe_files.check_path(tmp_path / "abs") == str(tmp_path / "real" / "dir")
    assert safe_files.check_path(tmp_path / "abs" / ".." / "dir") == str(tmp_path / "real" / "dir")


def test_the_end_may_not_be_open_to_others_and_a_parent_only_if_sticky(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    d.chmod(0o1777)
    (d / "x").mkdir()
    assert safe_files.check_path(d / "x") == str(d / "x")          # /tmp-like parent
    with pytest.raises(Unsafe) as e:
        safe_files.check_path(d)                                      # but not the end
    assert e.value.path == str(d) and "mode 1777" in e.value.problem
    assert safe_files.check_path(d, parent=True) == str(d)
    d.chmod(0o775)                                                    # group-writable
    with pytest.raises(Unsafe) as e:
        safe_files.check_path(d / "x")
    assert e.value.fix == f"chmod go-w {d}"


def test_an_acl_that_lets_another_user_write_is_refused(tmp_path):
    """chmod 755, then an ACL entry giving uid 65534 rwx (what `setfacl -m u:nobody:rwx`
    writes): the group bits become the ACL's mask, so the mode check sees the write."""
    import struct
    d = tmp_path / "acl"
    d.mkdir(mode=0o755)
    assert safe_files.check_path(d) == str(d)
    any_id = 0xFFFFFFFF
    entries = [(0x01, 7, any_id), (0x02, 7, NOBODY), (0x04, 5, any_id), (0x10, 7, any_id),
               (0x20, 5, any_id)]      # user::rwx user:nobody:rwx group::r-x mask::rwx other::r-x
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    try:
        os.setxattr(d, "system.posix_acl_access", blob)
    except OSError as e:
        pytest.skip(f"no POSIX ACLs here: {e.strerror}")
    with pytest.raises(Unsafe, match="writable by group or others"):
        safe_files.check_path(d)


def test_where_a_link_leads_is_checked_too(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    (open_dir / "target").mkdir()
    open_dir.chmod(0o777)
    (tmp_path / "link").symlink_to(open_dir / "target")
    with pytest.raises(Unsafe) as e:
        safe_files.check_path(tmp_path / "link")
    assert e.value.path == str(open_dir)


def test_a_link_loop_and_a_file_on_the_way_are_errors_not_hangs(tmp_path):
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as e:
        safe_files.check_path(tmp_path / "a")
    assert e.value.errno == errno.ELOOP
    (tmp_path / "f").write_text("")
    with pytest.raises(NotADirectoryError):
        safe_files.check_path(tmp_path / "f" / "x")
    with pytest.raises(FileNotFoundError):
        safe_files.check_path(tmp_path / "missing" / "x")


@as_root
def test_another_users_link_in_a_sticky_dir_is_refused(tmp_path):
    """In /tmp anyone may make a link; its owner may point it elsewhere at any time."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (tmp_path / "mine").mkdir()
    link = sticky / "theirs"
    link.symlink_to(tmp_path / "mine")
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(Unsafe) as e:
        safe_files.check_path(link)
    assert e.value.path == str(link) and "uid 65534" in e.value.problem


@as_root
def test_a_file_owned_by_another_user_is_not_read(tmp_path):
    f = tmp_path / "f"
    f.write_text("{}")
    assert safe_files.read(f) == b"{}"
    os.chown(f, NOBODY, NOBODY)
    with pytest.raises(Unsafe) as e:
        safe_files.read(f)
    assert "owned by uid 65534 (nobody), not by root" in str(e.value)


def test_read_follows_no_link_and_does_not_hang_on_a_fifo(tmp_path):
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(Unsafe, match="symbolic link"):
        safe_files.read(tmp_path / "link")
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(Unsafe, match="not a regular file"):
        safe_files.read(tmp_path / "fifo")
    (tmp_path / "open").write_text("x")
    (tmp_path / "open").chmod(0o666)
    with pytest.raises(Unsafe, match="mode 0666"):
        safe_files.read(tmp_path / "open")


def test_a_lock_is_never_opened_through_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "lock").symlink_to(victim)
    with pytest.raises(Unsafe, match="symbolic link"):
        safe_files.open_lock(tmp_path / "lock")
    assert victim.read_text() == "precious"
    fd = safe_files.open_lock(tmp_path / "fresh")
    try:
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
        assert os.get_inheritable(fd) is False
    finally:
        os.close(fd)


def test_ensure_dir_makes_what_is_missing_no_wider_than_asked_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        got = safe_files.ensure_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert got == str(tmp_path / "a" / "b" / "c")
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "b" / "c").st_mode) == 0o700


def test_replace_writes_a_new_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "state.json"
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "state.json.tmp").symlink_to(victim)       # names anyone could guess
    (tmp_path / "state.tmp").symlink_to(victim)
    for text in (b"one", b"two"):
        safe_files.replace(path, text)
        assert path.read_bytes() == text and not path.is_symlink()
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.tmp", "state.tmp",
                                            "victim"]
    assert safe_files.leftovers(path) == []


def test_a_replace_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    safe_files.replace(path, b"old")

    def no_room(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "write", no_room)
    with pytest.raises(OSError):
        safe_files.replace(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_leftovers_are_only_replaces_own_temporaries(tmp_path):
    path = tmp_path / "state.json"
    mine = tmp_path / f"state.json.{os.urandom(6).hex()}.tmp"
    for p in (mine, tmp_path / "state.json.x.tmp", tmp_path / "other.json.0123456789ab.tmp"):
        p.write_text("")
    assert safe_files.leftovers(path) == [mine]


def test_two_replaces_at_once_never_mix(tmp_path):
    """Unique temporary names: concurrent writers each land whole (the lock is what keeps
    vnetfw's writers apart; this is what holds even without it)."""
    path = tmp_path / "f"
    blobs = [bytes([65 + i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=safe_files.replace, args=(path, b)) for b in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert path.read_bytes() in blobs
    assert os.listdir(tmp_path) == ["f"]
