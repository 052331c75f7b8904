"""Start-up cost is kept down by importing late: `vnetfw --help` does not import the engine,
and a command's hot modules do not pull in the standard-library modules only a rare path
needs (difflib: a changed chain; tempfile: a Python without memfd_create; shutil: looking
for a tool), nor the D-Bus library (jeepney: only once a bus is asked). Checked in a fresh
interpreter, where nothing else has imported them."""

from __future__ import annotations

import subprocess
import sys

HOT = ("vnetfw.engine", "vnetfw.backends.iptables", "vnetfw.backends.nftables",
       "vnetfw.backends.xtfp", "vnetfw.backends.nfgen", "vnetfw.sources", "vnetfw.state")


def _loaded_after(imports: tuple[str, ...], watch: tuple[str, ...]) -> list[str]:
    code = (f"import sys\nfor m in {imports!r}: __import__(m)\n"
            f"print(' '.join(m for m in {watch!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def test_the_cli_module_imports_no_engine():
    # (nor dataclasses, which imports inspect: ~5 ms on every start, --help included)
    assert _loaded_after(("vnetfw.cli",), ("vnetfw.engine", "vnetfw.plan", "dataclasses",
                                           "vnetfw.backends.runner")) == []


def test_hot_modules_leave_rare_stdlib_modules_alone():
    assert _loaded_after(HOT, ("difflib", "tempfile", "shutil")) == []


def test_jeepney_waits_for_a_bus():
    # apply imports the firewalld integration on every change; only a reachable bus (and
    # firewalld enabled) may load the D-Bus library
    assert _loaded_after(HOT + ("vnetfw.cli", "vnetfw.firewalld", "vnetfw.linux.dbus"),
                         ("jeepney",)) == []
