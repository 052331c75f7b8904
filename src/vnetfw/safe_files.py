"""Files root reads, writes and runs: only where no one else could have put them.

vnetfw runs as root. A file that another user could have written, or replaced, or
pointed a symbolic link at, turns vnetfw into that user's tool: a planted ``lock`` link
makes root truncate any file, a planted state file gets its networks applied, a hook in a
world-writable folder runs as root. The rules here are those of sshd's StrictModes.

Contract:

- ``check_path(path)``: every directory and symbolic link met on the way to ``path``,
  resolved as the kernel resolves it (each link's own target path is walked too), and
  the file or directory it ends at, belong to a trusted user (root or the user running
  vnetfw: ``TRUSTED``); and none but the sticky ones on the way (``/tmp``: no one may
  replace another's entry there) is writable by group or others; the end never is.
  Otherwise ``Unsafe`` says which path and what to do about it. A missing component
  raises ``FileNotFoundError``. Once a path passes, only a trusted user can change
  what it names, so what is opened through it afterwards is what was checked.
- ``ensure_dir(path, mode)``: ``check_path``, creating what is missing (the parents
  0755, the directory itself ``mode``; never wider, whatever the umask).
- ``read(path)``: the bytes of a regular file opened without following a link at its
  end (``O_NOFOLLOW``), owned by a trusted user and not writable by group or others
  (checked on the open file: no window between check and read). The caller has checked
  its directory.
- ``open_lock(path)``: a lock file's descriptor, created if missing, never through a link.
- ``replace(path, data)``: write a file whole or not at all: a new temporary file
  (``O_EXCL`` under a name no one can guess, so never a planted one), fsync, rename over
  ``path``, fsync of the directory.

Every descriptor is opened ``O_CLOEXEC``: none leaks into the tools and hooks vnetfw runs.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Root, and the user running vnetfw (its own files in a test, or an unprivileged run).
TRUSTED = frozenset({0, os.geteuid()})
_MAX_LINKS = 40         # the kernel's limit on links followed in one path (ELOOP)


class Unsafe(Exception):
    """``path`` cannot be trusted: ``problem`` says why, ``fix`` what would make it safe."""

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path} {problem}; {fix}")

    def refusing(self, what: str, target: str | Path) -> str:
        """One line: ``refusing <what> <target>: <which path> <why>; <fix>``."""
        where = "it" if self.path == str(target) else self.path
        return f"refusing {what} {target}: {where} {self.problem}; {self.fix}"


def _owner_problem(path: str, st: os.stat_result) -> Unsafe | None:
    if st.st_uid in TRUSTED:
        return None
    try:
        import pwd
        who = f" ({pwd.getpwuid(st.st_uid).pw_name})"
    except (KeyError, ImportError):
        who = ""
    them = "root" if TRUSTED == {0} else f"root or uid {os.geteuid()}"
    return Unsafe(path, f"is owned by uid {st.st_uid}{who}, not by {them}",
                  f"chown root {path}, or remove it")


def _mode_problem(path: str, st: os.stat_result, end: bool) -> Unsafe | None:
    # (A POSIX ACL that lets another user write shows here too: the group bits are then
    # its mask, which includes every named user's and group's write.)
    if not st.st_mode & 0o022:
        return None
    if not end and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None         # sticky (/tmp): no one may replace another's entry
    return Unsafe(path, f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})",
                  f"chmod go-w {path}")


def check_path(path: str | Path, *, parent: bool = False) -> str:
    """Check ``path`` as the contract says; return it resolved (absolute, no links).
    ``parent``: the path is only a parent of what will be used, so it may be sticky."""
    # Not os.path.abspath: it takes "link/.." lexically away, where the kernel goes up
    # from where the link leads.
    todo = list(reversed(_absolute(path).parts[1:]))     # a stack of names
    cur, links = "/", 0
    st = os.lstat(cur)
    if (p := _owner_problem(cur, st) or _mode_problem(cur, st, not todo and not parent)):
        raise p
    while todo:
        name = todo.pop()
        if name == "..":            # its parent is already checked: we came through it
            cur = os.path.dirname(cur)
            continue
        nxt = os.path.join(cur, name)
        st = os.lstat(nxt)
        if (p := _owner_problem(nxt, st)) is not None:
            raise p
        if stat.S_ISLNK(st.st_mode):
            # A link in a checked directory is as safe as that directory; where it leads
            # is checked name by name, like any other path.
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), nxt)
            target = os.readlink(nxt)
            todo.extend(reversed(Path(target).parts[1:] if target.startswith("/")
                                 else Path(target).parts))
            if target.startswith("/"):
                cur = "/"
            continue
        if (p := _mode_problem(nxt, st, not todo and not parent)) is not None:
            raise p
        if todo and not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), nxt)
        cur = nxt
    return cur


def _absolute(path: str | Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(os.getcwd(), p)


def ensure_dir(path: str | Path, mode: int = 0o700, *, parent: bool = False) -> str:
    """``check_path(path)``, first creating what is missing of it."""
    try:
        return check_path(path, parent=parent)
    except FileNotFoundError:
        pass
    here = _absolute(path)
    if here.parent != here:
        ensure_dir(here.parent, 0o755, parent=True)
    try:
        os.mkdir(path, mode)        # the umask can only narrow it
    except FileExistsError:
        pass                        # made meanwhile: checked below like any other
    return check_path(path, parent=parent)


def _open(path: str | Path, flags: int, mode: int = 0o600) -> int:
    """os.open, never through a link at the end, never inherited by what vnetfw runs."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno == errno.ELOOP and os.path.islink(path):     # O_NOFOLLOW met a link
            raise Unsafe(str(path), "is a symbolic link (not followed)",
                         f"remove it: rm {path}") from None
        raise


def _check_open(path: str | Path, fd: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise Unsafe(str(path), "is not a regular file", f"remove it: rm {path}")
    if (p := _owner_problem(str(path), st) or _mode_problem(str(path), st, True)) is not None:
        raise p
    return st


def read(path: str | Path) -> bytes:
    """The bytes of a trusted regular file (see the contract)."""
    # O_NONBLOCK: a FIFO planted under the name must not hang the open; fstat refuses it.
    fd = _open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        size = _check_open(path, fd).st_size
        data = os.read(fd, size + 1)            # all of it in one call...
        if len(data) <= size:
            return data
        chunks = [data]                         # ...unless it grew meanwhile
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def open_lock(path: str | Path) -> int:
    """A descriptor of the lock file ``path`` (created 0600 if missing), to flock."""
    fd = _open(path, os.O_RDWR | os.O_CREAT)
    try:
        _check_open(path, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Make ``path`` hold ``data``: all of it, or (on any failure) what it held before."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.urandom(6).hex()}.tmp")
    fd = _open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    # The rename itself reaches the disk only with its directory.
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def leftovers(path: str | Path) -> list[Path]:
    """Temporary files ``replace`` left beside ``path`` when killed half-way (for a caller
    that holds the lock that serialises writers, and so knows no write is in progress)."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    pre = f"{path.name}."
    return [path.parent / n for n in names
            if n.startswith(pre) and n.endswith(".tmp") and len(n) == len(pre) + 16]
