"""The files vnetfw ships besides its code, in ``vnetfw/share/`` (package data, so they are
in the wheel and the sdist), and where ``vnetfw install-files`` puts them.

The man page and the completions are made from the argument parser (``manpage``,
``completion``) and kept in the tree, current: ``python -m vnetfw.shipped`` rewrites them,
tests/unit/test_share.py fails when they are stale. The systemd units are written by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

SHARE = Path(__file__).resolve().parent / "share"

# share/ path -> (what it is, where it is installed under the prefix or in /)
MAN = "man/man8/vnetfw.8"
BASH = "bash-completion/completions/vnetfw"
ZSH = "zsh/site-functions/_vnetfw"
UNITS = ("systemd/vnetfw.service", "systemd/vnetfw-watch.service")


def generated() -> dict[str, str]:
    """share/ path -> the text it must have for the current parser."""
    from .cli import build_parser
    from .completion import bash, zsh
    from .manpage import render
    parser = build_parser()
    return {MAN: render(parser), BASH: bash(parser), ZSH: zsh(parser)}


def stale() -> list[str]:
    """The generated files whose text in share/ is not what the parser makes now."""
    return [rel for rel, text in generated().items()
            if not (SHARE / rel).is_file() or (SHARE / rel).read_text() != text]


def main() -> int:
    for rel, text in generated().items():
        path = SHARE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
