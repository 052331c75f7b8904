"""The CLI's output into a pipe whose reader goes away (``vnetfw render ... | head``): not
an error, no traceback. (No root needed: render touches nothing.)"""

from __future__ import annotations

import subprocess
import sys

from benchmarks import netdefs


def test_render_into_a_closed_pipe_is_not_an_error(tmp_path):
    defs = netdefs.write_dir(tmp_path / "defs", netdefs.xmls("nat", 300))
    p = subprocess.Popen([sys.executable, "-m", "vnetfw", "render", "--backend", "nftables",
                          str(defs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().startswith(b"table inet vnetfw {")
    p.stdout.close()                        # the reader goes away; ~1 MB is still to come
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Traceback" not in err, err
