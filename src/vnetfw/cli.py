"""Command line: parse arguments, call the engine, print the result. Nothing else.

Global options (``--backend``, ``--profile``, ``--prefix``, ``--netns``, ``--state-dir``,
``--json``) are accepted before the subcommand and after it; ``VNETFW_BACKEND``,
``VNETFW_PROFILE`` and ``VNETFW_STATE_DIR`` set their defaults. Imports of the engine and
its dependencies are deferred to the command that needs them, so ``vnetfw --help`` starts
fast. What is printed, and the exit statuses, are ``output``'s.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
from typing import Any, Callable, NoReturn

from . import output
from .backends import registry as backend_registry

EXAMPLES = """\
examples:
  vnetfw render net.xml                      show what apply would load (no root needed)
  vnetfw apply /etc/libvirt/qemu/networks    start or update every network in a folder
  vnetfw apply --dry-run default.xml         show the changes against the live ruleset
  vnetfw sync /etc/vnetfw/networks           make the active networks exactly these
  virsh net-dumpxml default | vnetfw apply - read one definition from stdin (XML or TOML)
  vnetfw remove default                      remove a network's rules
  vnetfw status --json                       active networks and whether rules are in place
  vnetfw --netns lab1 setup                  create the private chains inside namespace lab1
  vnetfw demo                                prove isolation with real packets in a sandbox

""" + output.exit_codes_text()


def _global_options(parser: argparse.ArgumentParser, top: bool,
                    hooks_dir: bool = True) -> None:
    # On subparsers the defaults are SUPPRESS so an option given before the subcommand is
    # not overwritten by the subparser's default.
    d = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = parser.add_argument_group("global options")
    g.add_argument("--backend", choices=backend_registry.CHOICES,
                   default=d(os.environ.get("VNETFW_BACKEND", "auto")),
                   help="firewall backend (default: $VNETFW_BACKEND or auto: nftables if "
                        "usable, else iptables; auto keeps the backend of active networks)")
    g.add_argument("--profile", default=d(os.environ.get("VNETFW_PROFILE")),
                   help="rule profile: default (prefix VNETFW) or libvirt (prefix LIBVIRT, "
                        "libvirt's exact rules); default: $VNETFW_PROFILE, else the profile "
                        "of the active networks, else default")
    g.add_argument("--prefix", default=d(None), help="override the chain prefix")
    g.add_argument("--netns", default=d(None), metavar="NAME",
                   help="run every firewall command inside network namespace NAME")
    g.add_argument("--state-dir", default=d(None), metavar="DIR",
                   help="desired-state directory (default: $VNETFW_STATE_DIR or "
                        "/var/lib/vnetfw, or /var/lib/vnetfw/netns/NAME with --netns)")
    if hooks_dir:
        g.add_argument("--hooks-dir", default=d(None), metavar="DIR",
                       help="hook scripts run after networks change (default: "
                            "$VNETFW_HOOKS_DIR or /etc/vnetfw/hooks.d)")
    g.add_argument("--json", action="store_true", default=d(False),
                   help="machine-readable output")
    g.add_argument("-v", "--verbose", action="store_true", default=d(False),
                   help="list every change, however many (watch: also log every check)")


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors become a JSON error document when ``--json`` was
    asked for (``json_errors``, set by ``main`` from the raw arguments)."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if Parser.json_errors:
            output.emit_json(output.error_doc(None, "usage", f"{self.prog}: {message}"))
        super().error(message)      # the usage line on stderr, exit 2


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="vnetfw", description="Firewall manager for Linux virtual networks.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def cmd(name: str, help: str, hooks_dir: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        _global_options(sp, top=False, hooks_dir=hooks_dir)
        return sp

    sp = cmd("setup", "create the private chains and jumps (idempotent); report what changed")
    sp.add_argument("--dry-run", action="store_true", help="show what would change")
    sp = cmd("apply", "start or update the networks defined in files or folders")
    sp.add_argument("paths", nargs="+", metavar="PATH",
                    help="libvirt XML / TOML file or folder; - reads one from stdin")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the changes against the live ruleset, change nothing")
    sp = cmd("sync", "make the active networks exactly the ones defined in PATHs: start or "
                     "update them and remove every other, in one atomic change")
    sp.add_argument("paths", nargs="+", metavar="PATH",
                    help="libvirt XML / TOML file or folder; - reads one from stdin")
    sp.add_argument("--dry-run", action="store_true",
                    help="print the changes against the live ruleset, change nothing")
    sp = cmd("remove", "remove the rules of active networks")
    sp.add_argument("names", nargs="+", metavar="NAME")
    sp.add_argument("--dry-run", action="store_true", help="show what would change")
    cmd("list", "list the active networks")
    cmd("diff", "print every difference between the live firewall and the desired state; "
                "exit 1 if there is one")
    cmd("check", "like diff, but quiet when clean; exit 1 on any drift (for monitoring)")
    sp = cmd("reload", "repair everything from the desired state in one atomic step (after "
                       "firewall-cmd --reload, nft flush ruleset, iptables -F ...)")
    sp.add_argument("--dry-run", action="store_true", help="show what would be repaired")
    cmd("status", "active networks and whether the live firewall matches them")
    sp = cmd("show", "one active network: its definition, port forwards, rules with their "
                     "counters, and whether the live firewall matches it")
    sp.add_argument("name", metavar="NAME")
    sp = cmd("teardown", "remove every chain, jump and rule vnetfw owns, and nothing else")
    sp.add_argument("--dry-run", action="store_true", help="show what would change")
    sp = cmd("render", "print what apply would load into an empty ruleset (no root needed)")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="- reads one from stdin")
    sp.add_argument("--family", choices=("ipv4", "ipv6"),
                    help="one family only, exactly as iptables-restore/ip6tables-restore take it")
    cmd("demo", "build a sandbox of namespaces, apply a mixed set of networks and prove the "
                "traffic policy with real packets (never touches the host)")
    sp = cmd("watch", "keep the firewall repaired: react to nftables changes, firewalld "
                      "reloads and a periodic check; runs until SIGTERM (vnetfw-watch.service)")
    sp.add_argument("--interval", type=float, default=30.0, metavar="SECONDS",
                    help="periodic check (default 30; 0: never); the only way "
                         "iptables-legacy changes are noticed")
    sp.add_argument("--debounce", type=float, default=0.1, metavar="SECONDS",
                    help="quiet time that ends a burst of nftables changes (default 0.1; a "
                         "burst is checked at most 0.5 s after it began)")
    sp.add_argument("--no-events", action="store_true",
                    help="do not subscribe to nftables notifications (periodic checks only)")
    sp.add_argument("--once", action="store_true",
                    help="bind firewalld zones, check and repair once, then exit")
    sp.add_argument("--firewalld", choices=("auto", "off"), default=None,
                    help="put managed bridges into a firewalld zone when firewalld runs "
                         "(default: $VNETFW_FIREWALLD or auto; off with --netns unless "
                         "--firewalld-bus is given)")
    sp.add_argument("--firewalld-zone", metavar="ZONE",
                    help="zone for the bridges (default: $VNETFW_FIREWALLD_ZONE, else libvirt "
                         "if firewalld has it, else trusted)")
    sp.add_argument("--firewalld-bus", metavar="ADDRESS",
                    help="D-Bus address of firewalld's bus (default: $VNETFW_FIREWALLD_BUS, "
                         "else the system bus)")
    sp = cmd("migrate", "take networks over from an older layout: delete the rules a libvirt "
                        "before 5.1 (or an older vnetfw) wrote into the builtin chains for them, "
                        "and apply them with vnetfw's chains, in one step per family")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="the networks' definitions")
    sp.add_argument("--dry-run", action="store_true",
                    help="print exactly the rules that would be deleted; change nothing")
    sp.add_argument("--adopt", action="store_true",
                    help="also take the networks over from libvirt's LIBVIRT_* chains")
    sp.add_argument("--drop-libvirt-chains", action="store_true",
                    help="with --adopt: remove libvirt's chains and jumps once no rule is left "
                         "in them (default: keep them; a running libvirtd needs them)")
    sp = cmd("install-files", "install the systemd units, the man page and the bash and zsh "
                              "completions under /usr/local, the units running this vnetfw; "
                              "starts and enables nothing")
    sp.add_argument("what", nargs="*", metavar="WHAT",
                    help="units, man, completions (default: all three)")
    sp.add_argument("--root", default="/", metavar="DIR",
                    help="install into DIR/usr/local/... instead (a staging tree)")
    sp.add_argument("--dry-run", action="store_true", help="show what would be written")
    sp = cmd("doctor", "inspect the host (or --netns) and explain what will break virtual "
                       "networks, with the fix; changes nothing; exit 1 if something will")
    sp.add_argument("paths", nargs="*", metavar="PATH",
                    help="networks to check (default: the active networks)")
    sp = cmd("libvirt-hook", "libvirt's network hook: 'libvirt-hook NAME OP SUBOP -' (what "
                             "libvirt runs; firewalls open networks that carry vnetfw "
                             "metadata), 'libvirt-hook install' and 'libvirt-hook uninstall'",
             hooks_dir=False)
    sp.add_argument("event", nargs="+", metavar="ARG",
                    help="install | uninstall | NAME OP SUBOP - (as libvirt calls it)")
    sp.add_argument("--hooks-dir", dest="libvirt_hooks_dir", metavar="DIR",
                    default="/etc/libvirt/hooks/network.d",
                    help="install/uninstall: libvirt's network hooks folder (default "
                         "/etc/libvirt/hooks/network.d). vnetfw's own hooks folder, for the "
                         "installed hook to use, goes before the command: vnetfw --hooks-dir "
                         "DIR libvirt-hook install")
    sp = cmd("libvirt", "libvirt helpers: 'libvirt convert FILE|-' prints a network libvirt "
                        "firewalls rewritten as an open network with vnetfw metadata")
    lsub = sp.add_subparsers(dest="libvirt_command", metavar="SUBCOMMAND", required=True)
    cv = lsub.add_parser("convert", help="print FILE (or stdin: -) rewritten as <forward "
                                         "mode='open'/> + vnetfw metadata with the same meaning",
                         description="print a libvirt network rewritten as <forward "
                                     "mode='open'/> + vnetfw metadata with the same meaning; "
                                     "virsh net-define the result, then vnetfw migrate --adopt "
                                     "takes the rules over (docs/libvirt.md)")
    cv.add_argument("file", metavar="FILE", help="libvirt network XML, or - for stdin")
    return p


# ---------------------------------------------------------------------------------------


def _engine(a: argparse.Namespace):
    from .engine import Engine
    from .interrupts import say
    eng = Engine(backend=a.backend, profile=a.profile, netns=a.netns, state_dir=a.state_dir,
                 prefix=a.prefix, hooks_dir=a.hooks_dir)
    eng.store.on_wait = say         # a held lock: say who holds it, and that we wait
    return eng


def _emit(a: argparse.Namespace, doc: Any, human: Callable[[], None]) -> None:
    """``doc`` (or, if callable, what it returns: built only for --json) as JSON, or
    ``human()``; neither fails when stdout's reader has left."""
    if a.json:
        output.emit_json(doc() if callable(doc) else doc)
    else:
        output.guarded(human)


def _print_report(a: argparse.Namespace, rep) -> int:
    from .interrupts import DEFERRAL
    _emit(a, lambda: output.report_doc(rep, interrupted=DEFERRAL.interrupted),
          lambda: output.print_report(rep, a.verbose))
    if a.json:
        for f in rep.hook_failures:
            print(f"vnetfw: hook failed: {f}", file=sys.stderr)
    return 6 if rep.hook_failures else 0


def cmd_setup(a):
    return _print_report(a, _engine(a).setup(dry_run=a.dry_run))


def _read_into(a, method: str) -> int:
    from .sources import read_paths
    eng = _engine(a)
    eng.prefetch()                  # the firewall's generation, read while files load
    # Read as the engine asks: into a vacant firewall, each network is on its way to the
    # kernel while the next file is parsed.
    return _print_report(a, getattr(eng, method)(read_paths(a.paths), dry_run=a.dry_run))


def cmd_apply(a):
    return _read_into(a, "apply")


def cmd_sync(a):
    return _read_into(a, "sync")


def cmd_remove(a):
    return _print_report(a, _engine(a).remove(a.names, dry_run=a.dry_run))


def cmd_teardown(a):
    return _print_report(a, _engine(a).teardown(dry_run=a.dry_run))


def _drift(a, quiet_when_clean: bool) -> int:
    eng = _engine(a)
    items = eng.check()
    desired = bool(items) or bool(eng.store.load().networks)
    _emit(a, lambda: output.drift_doc(a.command, items, desired),
          lambda: output.print_drift(items, desired, quiet_when_clean))
    return 1 if items else 0


def cmd_diff(a):
    return _drift(a, quiet_when_clean=False)        # like diff(1): 1 if they differ


def cmd_check(a):
    return _drift(a, quiet_when_clean=True)


def cmd_reload(a):
    return _print_report(a, _engine(a).reload(dry_run=a.dry_run))


def cmd_list(a):
    nets = _engine(a).list_networks()
    _emit(a, lambda: output.list_doc(nets), lambda: output.print_list(nets))
    return 0


def cmd_status(a):
    st = _engine(a).status()
    _emit(a, lambda: output.status_doc(st), lambda: output.print_status(st))
    return 0 if st["in_sync"] else 1


def cmd_show(a):
    sh = _engine(a).show(a.name)
    _emit(a, lambda: output.show_doc(sh), lambda: output.print_show(sh))
    return 0 if sh["in_sync"] else 1


def cmd_render(a):
    from .backends import get_backend
    from .backends.runner import Runner
    from .engine import resolve_profile
    from .plan import plan
    from .sources import load_paths
    nets = load_paths(a.paths)
    desired = plan(nets, resolve_profile(a.profile or "default", a.prefix))
    backend = get_backend(backend_registry.unprobed(a.backend), Runner(None))
    fam = {"ipv4": 4, "ipv6": 6, None: None}[a.family]
    text = backend.render(desired, fam)
    if a.json:
        output.emit_json(output.document("render", backend=backend.name, family=a.family,
                                         networks=[n.name for n in nets], ruleset=text))
    else:
        output.write(text)
    return 0


def cmd_demo(a):
    from .lab.demo import run
    return run(backend=a.backend, profile=a.profile or "default", json=a.json)


def cmd_watch(a):
    from .backends.runner import netns_problem
    from .errors import BackendError, UsageError
    from .firewalld import FirewalldConfig
    from .watch import Log, WatchOptions, Watcher, run_once
    if a.netns is not None and (p := netns_problem(a.netns)) is not None:
        raise BackendError(p)
    for opt, v in (("--interval", a.interval), ("--debounce", a.debounce)):
        if not v >= 0:
            raise UsageError(opt, f"must be a number of seconds >= 0, not {v}")
    try:
        fw = FirewalldConfig.from_env(a.firewalld, a.firewalld_zone, a.firewalld_bus)
    except ValueError as e:
        raise UsageError("--firewalld", str(e)) from None
    opts = WatchOptions(interval=a.interval, debounce=a.debounce, events=not a.no_events,
                        firewalld=fw, backend=a.backend, profile=a.profile)
    w = Watcher(netns=a.netns, state_dir=a.state_dir, hooks_dir=a.hooks_dir, options=opts,
                log=Log(verbose=a.verbose))
    return run_once(w) if a.once else w.run()


def cmd_migrate(a):
    from .migrate_run import migrate
    from .sources import load_paths
    rep = migrate(load_paths(a.paths), adopt=a.adopt, dry_run=a.dry_run,
                  drop_libvirt_chains=a.drop_libvirt_chains, backend=a.backend,
                  profile=a.profile, netns=a.netns, state_dir=a.state_dir, prefix=a.prefix,
                  hooks_dir=a.hooks_dir)

    def human() -> None:
        from .migrate_run import print_human
        print_human(rep)
    _emit(a, lambda: output.document("migrate", **rep.to_json()), human)
    for f in rep.apply.hook_failures:
        print(f"vnetfw: hook failed: {f}", file=sys.stderr)
    return 6 if rep.apply.hook_failures else 0


def cmd_libvirt_hook(a):
    from . import libvirt_hook as lh
    ev = a.event
    if ev in (["install"], ["uninstall"]):
        if ev[0] == "install":
            cmd = lh.hook_command(a)
            path = lh.install(a.libvirt_hooks_dir, cmd)
            print(f"installed {path}: runs {' '.join(cmd)} libvirt-hook ...")
            print(f"note: {lh.RESTART_ADVICE}")
        else:
            path = lh.uninstall(a.libvirt_hooks_dir)
            print(f"removed {path}" if path else
                  f"no vnetfw hook in {a.libvirt_hooks_dir}: nothing to remove")
            if path:
                print("note: libvirt no longer runs it; the networks it firewalled keep "
                      "their rules until 'vnetfw remove NAME'")
        return 0
    if len(ev) != 4:
        from .errors import DefinitionError
        raise DefinitionError("libvirt-hook", "expected 'install', 'uninstall' or the four "
                                              f"arguments libvirt gives (NAME OP SUBOP -), not "
                                              f"{' '.join(ev)!r}")
    done = lh.run_event(ev, sys.stdin.buffer, lambda: _engine(a))
    if done:
        print(done)
    return 0


def cmd_libvirt(a):
    from .sources.libvirt_convert import convert
    if a.file == "-":
        data, source = sys.stdin.buffer.read(), "<stdin>"
    else:
        from .errors import DefinitionError
        try:
            with open(a.file, "rb") as f:
                data, source = f.read(), a.file
        except OSError as e:
            raise DefinitionError(a.file, f"cannot read: {e.strerror or e}") from None
    sys.stdout.write(convert(data, source))
    return 0


def cmd_install_files(a):
    from .errors import DefinitionError
    from .install import WHAT, install, plan, under_home, vnetfw_executable
    bad = [w for w in a.what if w not in WHAT]
    if bad:
        raise DefinitionError("install-files", f"{bad[0]!r} is not one of {', '.join(WHAT)}")
    exe = vnetfw_executable()
    done = install(plan(tuple(a.what) or WHAT, root=a.root, exe=exe), dry_run=a.dry_run)
    units = any(it.source.startswith("systemd/") for it, _ in done)

    def human() -> None:
        for it, status in done:
            verb = {"installed": "would install", "updated": "would update"}.get(
                status, status) if a.dry_run else status
            print(f"{verb:<13} {it.dest}")
        if units and under_home(exe):
            print(f"note: {exe} is under a home directory: the units get ProtectHome=read-only "
                  "(install vnetfw under /opt to keep homes hidden from them)")
        if units and a.root == "/":
            print("next: systemctl daemon-reload && "
                  "systemctl enable --now vnetfw.service vnetfw-watch.service")
    _emit(a, output.document("install-files", dry_run=a.dry_run, files=[
        {"path": str(it.dest), "source": it.source, "status": status} for it, status in done]),
        human)
    return 0


def cmd_doctor(a):
    from .doctor import run_doctor
    return run_doctor(a)


COMMANDS = {"setup": cmd_setup, "apply": cmd_apply, "remove": cmd_remove, "list": cmd_list,
            "status": cmd_status, "teardown": cmd_teardown, "render": cmd_render,
            "diff": cmd_diff, "check": cmd_check, "reload": cmd_reload,
            "demo": cmd_demo}
COMMANDS.update(migrate=cmd_migrate, doctor=cmd_doctor, sync=cmd_sync, show=cmd_show)
COMMANDS.update(watch=cmd_watch)
COMMANDS["libvirt-hook"] = cmd_libvirt_hook
COMMANDS["libvirt"] = cmd_libvirt
COMMANDS["install-files"] = cmd_install_files


# Commands that read or change a firewall (or a namespace): without CAP_NET_ADMIN each would
# fail at its first tool, with that tool's words ("iptables-save: Permission denied", or
# nft blaming the kernel). They say the cause instead, before anything else. render and
# list read only files; libvirt-hook is run by libvirtd as root.
NEEDS_NET_ADMIN = frozenset({"setup", "apply", "sync", "remove", "reload", "teardown",
                             "check", "diff", "status", "show", "migrate", "watch", "doctor",
                             "demo"})
CAP_NET_ADMIN = 12


def has_net_admin() -> bool:
    """Does this process hold CAP_NET_ADMIN (root, or a capability-holding service)?"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    Parser.json_errors = "--json" in raw
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.version:
        from . import __version__
        print(f"vnetfw {__version__}")
        return 0
    if not a.command:
        if a.json:
            output.emit_json(output.error_doc(None, "usage", "no command given"))
        parser.print_help(sys.stderr if a.json else None)
        return 2
    from .errors import VnetfwError
    if a.command != "watch":
        # A short-lived process that builds many small objects (10,000s of rules) and frees
        # them at exit: the cyclic collector only costs time here (~60 ms at 1,000 networks).
        gc.disable()
    from .interrupts import DEFERRAL, say
    DEFERRAL.raise_at_end, DEFERRAL.interrupted = False, False  # report, then 130 (below)

    def fail(doc: dict, line: str, code: int) -> int:
        if a.json:
            output.guarded(lambda: output.emit_json(doc))
        say(line)
        return code
    try:
        if a.command in NEEDS_NET_ADMIN and not has_net_admin():
            from .errors import NeedsRoot
            raise NeedsRoot(f"{a.command} needs root (CAP_NET_ADMIN)")
        code = COMMANDS[a.command](a)
        if DEFERRAL.interrupted:
            say("vnetfw: interrupted after the change in progress was finished and "
                "recorded (see above)")
            return 130
        return code
    except VnetfwError as e:
        return fail(output.error_doc_of(a.command, e), f"vnetfw: error: {e}", e.exit_code)
    except KeyboardInterrupt:
        # What was interrupted is whole or nothing: a first Ctrl-C during a commit is held
        # back until the change is recorded (``interrupts``); a second one gets here with
        # nft's transaction whole or not done, and an iptables change undone (an undo that
        # failed is a RollbackIncomplete, reported above).
        msg = ("interrupted; a change in progress either landed whole or not at all: "
               "'vnetfw check' says whether the firewall matches the recorded networks, "
               "'vnetfw reload' makes it match")
        return fail(output.error_doc(a.command, "interrupted", msg), f"vnetfw: {msg}", 130)
    except BrokenPipeError as e:
        if output.stdout_gone():
            # Output written through ``output`` keeps the command's status when the reader
            # leaves; this was printed some other way (the demo's tables): not an error.
            output.silence_stdout()
            return 0
        # A pipe to something else (a tool) broke.
        return fail(output.error_doc(a.command, "backend", str(e)), f"vnetfw: error: {e}", 3)
    finally:
        DEFERRAL.raise_at_end = True        # an in-process caller after us: the default


def run() -> NoReturn:
    """The process entry point (``vnetfw``, ``python -m vnetfw``): ``main``, then exit
    without the interpreter's teardown. A command that planned 1,000 networks leaves some
    100,000 objects behind, and freeing them one by one at exit costs 20-30 ms that buy
    nothing: the kernel reclaims the memory at once. Exit handlers (the lab's namespace
    clean-up) still run and output is flushed; the state file is already renamed into
    place and the state lock is an flock, which the kernel releases."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            pass
    os._exit(code)
