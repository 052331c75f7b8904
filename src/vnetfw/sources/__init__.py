"""Definition sources: files and folders of libvirt network XML or native TOML -> model.

Contract: ``load_paths`` returns validated networks (each on its own and together) or raises
``DefinitionError`` naming the file, network and field. ``read_paths`` is the lazy form for
a consumer that acts on each network as it is read (``Engine.apply``, which checks them
together before it commits anything). It reads files only; it never touches
the system. Folders are read non-recursively in name order (``*.xml`` and ``*.toml``).
The path ``-`` is standard input (once): one document, libvirt XML or TOML, told apart by
its content (XML starts with ``<``), reported as ``<stdin>``.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DefinitionError
from ..model import Network, validate_together


STDIN = "-"
STDIN_SOURCE = "<stdin>"


def load_bytes(data: bytes, source: str) -> list[Network]:
    """One document whose format is told by its content: XML (after an optional byte order
    mark and white space, it starts with ``<``: a declaration, a comment or ``<network>``)
    or else TOML (which cannot start with ``<``)."""
    if data.lstrip(b"\xef\xbb\xbf").lstrip().startswith(b"<"):
        from .libvirt_xml import parse_network_xml
        return [parse_network_xml(data, source)]
    from .toml import parse_toml
    return parse_toml(data, source)


# A definition is a few hundred bytes (libvirt's largest reference XML: ~3 KB); a file of
# more than this is a mistake, not a network, and is refused before it is read whole.
MAX_DEFINITION_BYTES = 1 << 20


def read_definition(path: Path) -> bytes:
    """The bytes of one definition file: a regular file (a symlink to one is fine: libvirt's
    autostart folder is made of them) of at most ``MAX_DEFINITION_BYTES``. Anything else is
    refused with one line before a byte is read: ``/dev/zero`` never ends, a FIFO blocks
    until someone writes to it (hence O_NONBLOCK: opening one returns at once, and fstat
    then says what it is), and a huge file would be read into memory whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise DefinitionError(str(path), f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DefinitionError(str(path), f"cannot read: not a regular file ({_kind(st.st_mode)})")
        if st.st_size > MAX_DEFINITION_BYTES:
            raise DefinitionError(str(path), f"{st.st_size} bytes is too large for a "
                                             f"definition (at most {MAX_DEFINITION_BYTES})")
        chunks, size = [], 0
        while chunk := os.read(fd, MAX_DEFINITION_BYTES + 1 - size):   # it may grow
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_DEFINITION_BYTES:
                raise DefinitionError(str(path), "too large for a definition (at most "
                                                 f"{MAX_DEFINITION_BYTES} bytes)")
        return b"".join(chunks)
    except OSError as e:
        raise DefinitionError(str(path), f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def load_file(path: Path) -> list[Network]:
    """Load one file; the format is chosen by its extension (``.xml`` or ``.toml``); ``-``
    is standard input, its format chosen by its content."""
    if str(path) == STDIN:
        try:
            data = sys.stdin.buffer.read(MAX_DEFINITION_BYTES + 1)
        except (OSError, ValueError, AttributeError) as e:
            raise DefinitionError(STDIN_SOURCE, f"cannot read: {e}") from None
        if len(data) > MAX_DEFINITION_BYTES:
            raise DefinitionError(STDIN_SOURCE, "too large for a definition (at most "
                                                f"{MAX_DEFINITION_BYTES} bytes)")
        if not data.strip():
            raise DefinitionError(STDIN_SOURCE, "no definition on standard input")
        return load_bytes(data, STDIN_SOURCE)
    suffix = path.suffix.lower()
    data = read_definition(path)
    if suffix == ".xml":
        from .libvirt_xml import parse_network_xml
        return [parse_network_xml(data, str(path))]
    if suffix == ".toml":
        from .toml import parse_toml
        return parse_toml(data, str(path))
    raise DefinitionError(str(path), "unknown file type (expected .xml or .toml)")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders replaced by their ``*.xml``/``*.toml`` files in name order."""
    out: list[Path] = []
    for given in paths:
        if str(given) == STDIN:
            if any(str(o) == STDIN for o in out):
                raise DefinitionError(STDIN_SOURCE, "'-' (standard input) given twice")
            out.append(Path(STDIN))
            continue
        p = Path(given)
        try:
            out.extend(_expand(p))
        except OSError as e:        # a folder on the way that we may not enter, ...
            raise DefinitionError(str(p), f"cannot read: {e.strerror or e}") from None
    return out


def _expand(p: Path) -> list[Path]:
    if p.is_dir():
        # scandir knows each entry's type without a stat, and names sort as strings
        # (sorting Path objects costs ~10 ms for a folder of 1,000 files).
        with os.scandir(p) as it:
            names = sorted(e.name for e in it if e.is_file() and
                           os.path.splitext(e.name)[1].lower() in (".xml", ".toml"))
        if not names:
            raise DefinitionError(str(p), "folder holds no .xml or .toml definitions")
        return [p / name for name in names]
    if p.exists():
        return [p]
    raise DefinitionError(str(p), "no such file or folder")


def load_paths(paths: Iterable[str | Path]) -> tuple[Network, ...]:
    """Load and validate every definition under ``paths``; sorted by network name."""
    return validate_together(read_paths(paths))


def read_paths(paths: Iterable[str | Path]) -> Iterator[Network]:
    """Every network under ``paths``, one file read per step, each checked on its own;
    checking them together is the consumer's. A path that does not exist is reported now,
    before any file is read."""
    files = expand_paths(paths)
    return (net for f in files for net in load_file(f))
