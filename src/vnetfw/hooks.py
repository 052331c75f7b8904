"""Hooks: the admin's programs, run as root after a command changed networks.

Contract:

- ``find(directory)``: the hooks in ``directory``, in the order they run; [] if it does not
  exist. A hook is an entry named as Debian's run-parts requires by default (without
  ``--lsbsysinit``): ASCII letters, digits, ``_`` and ``-``, nothing else. That leaves
  out dot-files, editor backups (``x~``), packaging leftovers (``x.dpkg-old``,
  ``x.dpkg-dist``, ``x.rpmnew``, ``x.rpmsave``...) and ``x.sh``. It must be a regular
  executable file (a link to one counts); others are skipped, as run-parts skips them.
  Order: the C locale's, byte by byte. Root runs them, so the folder, every directory
  above it, each hook, and every step of a hook's link must be root's (or the invoking
  user's) and not writable by group or others (``safe_files.check_path``): otherwise
  ``HookError``, one line naming the path and the fix, before anything has run.
- ``run(runner, hooks, events, env)``: for each (network, event), every hook runs as
  ``/abs/path/HOOK NETWORK EVENT`` with the network's definition as JSON on stdin, by
  ``runner``: inside its network namespace (``--netns``), in a session of its own (a
  Ctrl-C held back for the command is not the hook's to die of), for at most
  ``TIMEOUT`` seconds, with vnetfw's environment plus ``env``. Returns one line per
  failure (exit status and the last line of its stderr, or why it did not start);
  never raises for a hook's failure.

The events (``added``, ``updated``, ``removed``, ``reloaded``) and the arguments are
libvirt's network hook's.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Iterable, Mapping

from . import safe_files
from .backends.runner import CommandFailed, Runner
from .errors import BackendError, HookError
from .model import Network

TIMEOUT = 60.0
# run-parts(8): "the names must consist entirely of ASCII upper- and lower-case letters,
# ASCII digits, ASCII underscores, and ASCII minus-hyphens" (re.ASCII: no other letters)
_NAME = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def find(directory: str | Path) -> list[str]:
    """The hooks to run, as absolute paths (see the contract)."""
    folder = os.path.abspath(directory)
    try:
        safe_files.check_path(folder)
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise HookError(f"hooks dir {folder}: not a directory") from None
    except safe_files.Unsafe as e:
        raise HookError(e.refusing("hooks dir", folder)) from None
    except OSError as e:
        raise HookError(f"hooks dir {folder}: cannot read: {e.strerror or e}") from None
    found = []
    for name in sorted(names, key=os.fsencode):
        path = os.path.join(folder, name)
        if not _NAME.fullmatch(name):
            continue
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
                continue
            safe_files.check_path(path)
        except FileNotFoundError:
            continue                    # gone, or a link to nothing: nothing to run
        except safe_files.Unsafe as e:
            raise HookError(e.refusing("hook", path)) from None
        except OSError as e:
            raise HookError(f"hook {path}: {e.strerror or e}") from None
        found.append(path)
    return found


def run(runner: Runner, hooks: list[str], events: Iterable[tuple[Network, str]],
        env: Mapping[str, str]) -> list[str]:
    """Run every hook for every event (see the contract); the failures, one line each."""
    failures = []
    for net, event in events:
        payload = json.dumps(net.to_dict())
        for hook in hooks:
            try:
                runner.run([hook, net.name, event], payload, env=env, timeout=TIMEOUT)
                continue
            except CommandFailed as e:
                err = f"exit {e.returncode}: {(e.stderr.splitlines() or [''])[-1]}"
            except BackendError as e:       # not started, or out of time (and killed)
                err = str(e)
            failures.append(f"hook {os.path.basename(hook)} {net.name} {event}: {err}")
    return failures
