"""Input that is not what it claims: definition paths that are not regular files or are
huge, names longer than Linux allows in bytes, values too long for an error line. Each is
refused with one line, quickly, before anything is planned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vnetfw.errors import DefinitionError, cut, shown
from vnetfw.model import ifname_problem
from vnetfw.sources import MAX_DEFINITION_BYTES, load_paths
from vnetfw.sources.toml import parse_toml

NET = """[[network]]
name = "{name}"
bridge = "{bridge}"
mode = "isolated"
ip = [{{ address = "10.40.1.1", prefix = 24 }}]
"""


def refused(path) -> str:
    with pytest.raises(DefinitionError) as e:
        load_paths([path])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_interface_names_are_counted_in_bytes():
    """IFNAMSIZ is 16 bytes with the NUL: 5 three-byte characters fit, 6 do not (18 bytes,
    6 characters: accepted before, then refused by the kernel)."""
    assert ifname_problem("ааааааа") is None                   # 7 chars, 14 bytes
    assert "15 bytes" in ifname_problem("аааааааа")            # 8 chars, 16 bytes
    assert ifname_problem("ブリッジ網") is None                  # 5 chars, 15 bytes
    assert "15 bytes" in ifname_problem("ブリッジ網路")        # 6 chars, 18 bytes
    assert ifname_problem("a" * 15) is None and ifname_problem("a" * 16) is not None


def test_a_multibyte_bridge_name_too_long_in_bytes_is_refused_naming_the_field(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text(NET.format(name="n1", bridge="ブリッジ網路"))
    msg = refused(f)
    assert "network 'n1'" in msg and "bridge" in msg and "15 bytes" in msg


@pytest.mark.parametrize("make", ["fifo", "chardev", "folder-entry"])
def test_a_path_that_is_not_a_regular_file_is_refused_without_reading(tmp_path, make):
    if make == "fifo":
        path = tmp_path / "nets.toml"
        os.mkfifo(path)                  # nobody writes: reading it would block forever
        assert "FIFO" in refused(path)
    elif make == "chardev":
        assert "character device" in refused("/dev/zero")   # reading it never ends
    else:
        (tmp_path / "d.toml").mkdir()
        with pytest.raises(DefinitionError, match="not a regular file|holds no"):
            load_paths([tmp_path / "d.toml"])


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.toml"
    with open(path, "wb") as f:
        f.truncate(200 << 20)               # 200 MB, sparse: costs no disk
    msg = refused(path)
    assert "too large" in msg and len(msg) < 300


def test_a_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "ok.toml"
    text = NET.format(name="n1", bridge="vbr1")
    path.write_text(text + "#" * (MAX_DEFINITION_BYTES - len(text) - 1) + "\n")
    assert [n.name for n in load_paths([path])] == ["n1"]


def test_a_huge_name_makes_a_short_error_line(tmp_path):
    path = tmp_path / "n.toml"
    path.write_text(NET.format(name="x" * 900_000, bridge="vbr1"))
    msg = refused(path)
    assert "network name" in msg and "900000 characters" in msg and len(msg) < 1500
    path.write_text(NET.format(name="n1", bridge="b" * 900_000))
    msg = refused(path)
    assert "bridge" in msg and len(msg) < 1500


def test_xml_with_a_huge_name_makes_a_short_error_line(tmp_path):
    path = tmp_path / "n.xml"
    path.write_text(f"<network><name>n1</name><bridge name='{'b' * 500_000}'/></network>")
    assert len(refused(path)) < 1500


def test_every_part_of_a_definition_error_is_cut_to_a_line():
    e = DefinitionError("f.toml", "value " + "v" * 10_000, network="n" * 10_000,
                        field="f" * 10_000)
    assert len(str(e)) < 1200 and "more characters" in str(e)
    assert e.network == "n" * 10_000            # the full values stay for callers
    assert cut("short") == "short" and shown("abc") == "'abc'"


def test_the_cli_refuses_dev_zero_in_one_line_at_once():
    p = subprocess.run([sys.executable, "-m", "vnetfw", "render", "/dev/zero"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "/dev/zero" in p.stderr, p.stderr


def test_toml_parse_errors_stay_one_short_line():
    with pytest.raises(DefinitionError) as e:
        parse_toml("name = '" + "z" * 100_000, "t.toml")
    assert len(str(e.value)) < 1500
