"""vnetfw(8), written from the argument parser, so the manual says what the CLI accepts.

``render(parser)`` is pure: the parser (every command, option, choice and help text, the
epilog) in, man(7) roff out. The sections a parser cannot know (environment, files, see
also) are the constants below. ``python -m vnetfw.shipped`` writes the result into
``vnetfw/share/man/man8/vnetfw.8``, which the wheel ships and ``vnetfw install-files``
installs; tests/unit/test_share.py fails when that file is not what ``render`` makes of the
current parser.
"""

from __future__ import annotations

import argparse
import re

from . import __version__

ENVIRONMENT = [
    ("VNETFW_BACKEND", "default of --backend."),
    ("VNETFW_PROFILE", "default of --profile."),
    ("VNETFW_STATE_DIR", "default of --state-dir."),
    ("VNETFW_HOOKS_DIR", "default of --hooks-dir."),
    ("VNETFW_FIREWALLD, VNETFW_FIREWALLD_ZONE, VNETFW_FIREWALLD_BUS",
     "defaults of watch's --firewalld, --firewalld-zone and --firewalld-bus."),
]
FILES = [
    ("/var/lib/vnetfw/state.json",
     "the desired state: every active network with the backend and profile it was applied "
     "with (with --netns NAME: /var/lib/vnetfw/netns/NAME/)."),
    ("/etc/vnetfw/hooks.d/", "hook scripts, run after networks change."),
    ("/etc/default/vnetfw", "settings of the systemd units (KEY=value lines)."),
    ("vnetfw.service, vnetfw-watch.service",
     "systemd units: replay the state at boot and after a firewall reload; repair lost rules "
     "at once. Installed by vnetfw install-files."),
]
SEE_ALSO = "nft(8), iptables(8), iptables-restore(8), virsh(1), systemd.exec(5)"


def _esc(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + l if l.startswith((".", "'")) else l for l in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{_esc(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{_esc(text)}\\fR"


def _expand(action: argparse.Action, text: str | None) -> str:
    """argparse's own help substitutions (%(default)s, %(choices)s ...), as --help shows."""
    if not text:
        return ""
    params = dict(vars(action), prog="vnetfw")
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return text % params if "%(" in text else text.replace("%%", "%")


def _option_synopsis(action: argparse.Action) -> str:
    """``--backend {auto,nftables,...}`` / ``--state-dir DIR`` / ``PATH ...`` in roff."""
    if not action.option_strings:
        name = action.metavar or action.dest
        arg = _italic(str(name))
        if action.nargs in ("+", argparse.ONE_OR_MORE):
            return f"{arg} ..."
        if action.nargs in ("*", "?"):
            return f"[{arg} ...]" if action.nargs == "*" else f"[{arg}]"
        return arg
    flags = ", ".join(_bold(o) for o in action.option_strings)
    if action.nargs == 0:
        return flags
    if action.choices is not None and action.metavar is None:
        return f"{flags} {{{_esc(','.join(map(str, action.choices)))}}}"
    return f"{flags} {_italic(str(action.metavar or action.dest.upper()))}"


def _actions(parser: argparse.ArgumentParser, *, globals_too: bool) -> list[argparse.Action]:
    out = []
    for group in parser._action_groups:                    # argparse keeps no public list
        if group.title == "global options" and not globals_too:
            continue
        for a in group._group_actions:
            if a.help == argparse.SUPPRESS or isinstance(a, (argparse._HelpAction,
                                                              argparse._SubParsersAction)):
                continue
            out.append(a)
    return out


def _options(actions: list[argparse.Action]) -> list[str]:
    lines = []
    for a in actions:
        lines += [".TP", _option_synopsis(a), _esc(_expand(a, a.help)) or "\\&"]
    return lines


def _commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(sub.choices.items())


def _epilog_sections(epilog: str | None) -> list[str]:
    """The epilog's paragraphs ("examples:", a table of exit codes ...) as sections whose
    title is the paragraph's first line, its body kept as --help shows it."""
    lines: list[str] = []
    for para in re.split(r"\n\s*\n", (epilog or "").strip()):
        head, _, body = para.partition("\n")
        if not body or not head.rstrip().endswith(":"):
            lines += [".PP", _esc(para)]
            continue
        lines += [f".SH {head.rstrip(':').strip().upper()}", ".nf", _esc(body.rstrip()), ".fi"]
    return lines


def render(parser: argparse.ArgumentParser) -> str:
    """The whole manual page, as a string ending in a newline."""
    cmds = _commands(parser)
    out = [
        '.\\" Generated from vnetfw\'s argument parser by vnetfw.manpage; do not edit.',
        f'.TH VNETFW 8 "" "vnetfw {__version__}" "System Administration"',
        ".SH NAME",
        "vnetfw \\- " + _esc(_first_lower((parser.description or "").rstrip("."))),
        ".SH SYNOPSIS",
        f"{_bold('vnetfw')} [{_italic('global options')}] {_italic('command')} "
        f"[{_italic('options')}] [{_italic('arguments')}]",
        ".br",
        f"{_bold('vnetfw')} {_bold('--help')} | {_bold('--version')}",
        ".SH DESCRIPTION",
        _esc("vnetfw manages the firewall of Linux virtual networks, the bridges that carry "
             "VMs and containers. It reads libvirt network XML as is, or its own TOML, and "
             "puts every rule into private chains linked from the builtin chains, with the "
             "nftables, iptables-nft or iptables-legacy backend. Every change is atomic: it "
             "lands whole, or the live ruleset is left exactly as it was."),
        ".PP",
        _esc("Global options may be given before or after the command."),
        ".SH GLOBAL OPTIONS",
        *_options(_actions(parser, globals_too=True)),
        ".SH COMMANDS",
    ]
    for name, sp in cmds:
        usage = " ".join(_option_synopsis(a) for a in _actions(sp, globals_too=False)
                         if not a.option_strings)
        out += [".TP", f"{_bold(name)} {usage}".rstrip(), _esc(sp.description or "")]
        opts = [a for a in _actions(sp, globals_too=False) if a.option_strings]
        if opts:
            out.append(".RS")
            out += _options(opts)
            out.append(".RE")
    out += _epilog_sections(parser.epilog)
    out += [".SH ENVIRONMENT"]
    for var, what in ENVIRONMENT:
        out += [".TP", _bold(var), _esc(what)]
    out += [".SH FILES"]
    for path, what in FILES:
        out += [".TP", _italic(path), _esc(what)]
    out += [".SH SEE ALSO", _esc(SEE_ALSO), ""]
    return "\n".join(out)


def _first_lower(text: str) -> str:
    return text[:1].lower() + text[1:]
