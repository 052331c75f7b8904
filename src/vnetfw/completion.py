"""Shell completion for bash and zsh, written from the argument parser.

``bash(parser)`` and ``zsh(parser)`` are pure: parser in, script text out. Both complete
the commands, every command's options and the global ones, the choices of an option that
has them, directories for ``DIR`` options, files for ``PATH`` arguments, and the network
namespaces (``ip netns list``) for ``--netns``. ``python -m vnetfw.shipped`` writes them into
``vnetfw/share/``; tests/unit/test_share.py fails when those files are stale.
"""

from __future__ import annotations

import argparse
import re

from .manpage import _actions, _commands

HEADER = "generated from vnetfw's argument parser by vnetfw.completion; do not edit"


def _takes_value(a: argparse.Action) -> bool:
    return bool(a.option_strings) and a.nargs != 0


def _kind(a: argparse.Action) -> str:
    """What the value of an option (or a positional argument) is: choices, dir, file,
    netns or nothing we can list."""
    if a.choices is not None:
        return "choices"
    if a.dest == "netns":
        return "netns"
    meta = str(a.metavar or "")
    return {"DIR": "dir", "PATH": "file", "FILE": "file"}.get(meta, "none")


# --- bash --------------------------------------------------------------------------------

def _bash_value(a: argparse.Action) -> str:
    kind = _kind(a)
    if kind == "choices":
        return f'COMPREPLY=($(compgen -W "{" ".join(map(str, a.choices))}" -- "$cur"))'
    if kind == "dir":
        return 'compopt -o filenames; COMPREPLY=($(compgen -d -- "$cur"))'
    if kind == "file":
        return 'compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur"))'
    if kind == "netns":
        return ('COMPREPLY=($(compgen -W "$(ip netns list 2>/dev/null | cut -d" " -f1)" '
                '-- "$cur"))')
    return "COMPREPLY=()"


def bash(parser: argparse.ArgumentParser) -> str:
    cmds = _commands(parser)
    top = _actions(parser, globals_too=True)
    glob = [o for a in top for o in a.option_strings]
    value_cases = []                       # "$cmd:$prev" patterns, most specific first
    for name, sp in cmds:
        for a in _actions(sp, globals_too=False):
            if _takes_value(a):
                value_cases.append(("|".join(f"{name}:{o}" for o in a.option_strings),
                                    _bash_value(a)))
    for a in top:
        if _takes_value(a):
            value_cases.append(("|".join(f"*:{o}" for o in a.option_strings), _bash_value(a)))
    positional = []
    for name, sp in cmds:
        pos = [a for a in _actions(sp, globals_too=False) if not a.option_strings]
        opts = [o for a in _actions(sp, globals_too=False) for o in a.option_strings]
        files = any(_kind(a) == "file" for a in pos)
        positional.append((name, " ".join(opts), files))
    lines = [
        f"# bash completion for vnetfw ({HEADER})",
        "_vnetfw() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
        '    local cmd="" i w',
        f'    local commands="{" ".join(n for n, _ in cmds)}"',
        f'    local global="{" ".join(glob)}"',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        w=${COMP_WORDS[i]}',
        '        case " $commands " in *" $w "*) cmd=$w; break ;; esac',
        "    done",
        '    case "$cmd:$prev" in',
    ]
    for pattern, action in value_cases:
        lines.append(f"        {pattern}) {action}; return ;;")
    lines += [
        "    esac",
        '    local opts="" files=""',
        '    case "$cmd" in',
    ]
    for name, opts, files in positional:
        lines.append(f'        {name}) opts="{opts}"; files={"yes" if files else ""} ;;')
    lines += [
        "    esac",
        '    if [[ $cur == -* ]]; then',
        '        COMPREPLY=($(compgen -W "$global $opts" -- "$cur"))',
        '    elif [[ -z $cmd ]]; then',
        '        COMPREPLY=($(compgen -W "$commands" -- "$cur"))',
        '    elif [[ -n $files ]]; then',
        '        compopt -o filenames; COMPREPLY=($(compgen -f -- "$cur"))',
        "    fi",
        "}",
        "complete -F _vnetfw vnetfw",
        "",
    ]
    return "\n".join(lines)


# --- zsh ---------------------------------------------------------------------------------

def _short_help(a: argparse.Action | argparse.ArgumentParser) -> str:
    """The help's first clause, quoted for an _arguments spec (no brackets, colons, quotes)."""
    text = (a.help if isinstance(a, argparse.Action) else a.description) or ""
    text = re.split(r"[;(]|: ", text)[0].strip().rstrip(":,.")
    return text.replace("'", "").replace("[", "(").replace("]", ")").replace(":", " -")


def _zsh_value(a: argparse.Action) -> str:
    kind = _kind(a)
    name = str(a.metavar or a.dest).lower()
    return {"choices": f":{name}:({' '.join(map(str, a.choices or ()))})",
            "dir": f":{name}:_directories", "file": f":{name}:_files",
            "netns": f":{name}:_vnetfw_netns"}.get(
        kind, f":{name}: ")


def _zsh_option(a: argparse.Action) -> str:
    value = _zsh_value(a) if _takes_value(a) else ""
    flags = a.option_strings
    excl = f"({' '.join(flags)})" if len(flags) > 1 else ""
    body = f"[{_short_help(a)}]{value}"
    suffix = "=" if value and all(f.startswith("--") for f in flags) else ""
    if len(flags) > 1:
        return f"'{excl}'{{{','.join(f + suffix for f in flags)}}}'{body}'"
    return f"'{flags[0]}{suffix}{body}'"


def zsh(parser: argparse.ArgumentParser) -> str:
    cmds = _commands(parser)
    top = _actions(parser, globals_too=True)
    glob_opts = [a for a in top if a.option_strings and a.dest != "version"]
    lines = [
        "#compdef vnetfw",
        f"# zsh completion for vnetfw ({HEADER})",
        "",
        "_vnetfw_netns() {",
        "    local -a ns",
        '    ns=(${${(f)"$(ip netns list 2>/dev/null)"}%% *})',
        "    _describe -t netns 'network namespace' ns",
        "}",
        "",
        "_vnetfw() {",
        "    local curcontext=$curcontext state line ret=1",
        "    local -a global commands",
        "    global=(",
        *(f"        {_zsh_option(a)}" for a in glob_opts),
        "    )",
        "    commands=(",
        *(f"        '{n}:{_short_help(sp)}'" for n, sp in cmds),
        "    )",
        "    _arguments -C $global '--version[print the version and exit]' \\",
        "        '1:command:->command' '*::argument:->argument' && ret=0",
        "    case $state in",
        "        command) _describe -t commands 'vnetfw command' commands && ret=0 ;;",
        "        argument)",
        "            case $line[1] in",
    ]
    for name, sp in cmds:
        specs = []
        for a in _actions(sp, globals_too=False):
            if a.option_strings:
                specs.append(_zsh_option(a))
            else:
                many = "*" if a.nargs in ("+", "*") else ""
                action = "_files" if _kind(a) == "file" else " "
                specs.append(f"'{many}:{str(a.metavar or a.dest).lower()}:{action}'")
        args = " ".join(["$global", *specs])
        lines.append(f"                {name}) _arguments {args} && ret=0 ;;")
    lines += [
        "            esac ;;",
        "    esac",
        "    return ret",
        "}",
        "",
        '_vnetfw "$@"',
        "",
    ]
    return "\n".join(lines)
