"""A real libvirtd, confined, for tests and benchmarks: it never touches the host.

Confinement (the pattern of the project's ``libvirt-peer.sh``, self-contained here):

- its own network namespace (a lab ``Netns``): its bridges, dnsmasq, rules and sysctls;
- a private mount namespace (``unshare --mount --propagation private``) in which
  ``/etc/libvirt``, ``/run/libvirt`` and ``/var/lib/libvirt`` are binds of folders under
  ``base``: its config, network definitions, autostart links, status XML, dnsmasq files and
  hooks (``base/etc/hooks/network.d``) are all its own;
- ``LIBVIRT_DRIVER_DIR`` holds only the network driver, so no qemu/storage/nwfilter driver
  loads; ``--config`` puts its sockets under ``base/sock`` (root only, auth none);
- no D-Bus: ``DBUS_SYSTEM_BUS_ADDRESS`` points nowhere, so it can never find (and write
  rules through) a firewalld on the host's system bus.

The host's ``/run/libvirt`` and ``/var/lib/libvirt`` are only used as mount points; they are
created (empty) if missing and left in place, since removing a folder that is a mount point
in another mount namespace detaches that mount (a concurrent confined daemon's).

``root`` runs a libvirt unpacked under a folder (bookworm-backports' 11.3 from ``dpkg-deb
-x``) instead of the installed one; libvirt >= 10 adds a ``tc ... action csum`` filter per
IPv4 bridge and fails the start on a kernel without ``act_csum``, so ``tc_shim`` puts a
``tc`` first in its PATH that turns only those calls into logged no-ops.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .netns import Netns

LIBDIR = "/usr/lib/x86_64-linux-gnu"
DRIVER = "libvirt/connection-driver/libvirt_driver_network.so"
MOUNTS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt")


def missing() -> str | None:
    """Why a confined libvirtd cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    for path in ("/usr/sbin/libvirtd", "/usr/bin/virsh", "/usr/sbin/dnsmasq",
                 f"{LIBDIR}/{DRIVER}"):
        if not os.path.exists(path):
            return (f"{path} not installed (apt-get install --no-install-recommends "
                    "libvirt-daemon libvirt-clients dnsmasq-base; scripts/dev does)")
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not installed"
    return None


def csum_missing() -> bool:
    """Does this kernel lack tc's act_csum (libvirt >= 10 needs it for IPv4 bridges)?"""
    try:
        import gzip
        with gzip.open("/proc/config.gz", "rt") as f:
            return "# CONFIG_NET_ACT_CSUM is not set" in f.read()
    except OSError:
        return False


class Libvirtd:
    """One confined libvirtd in ``ns``, with everything it writes under ``base``."""

    def __init__(self, ns: Netns, base: Path, root: str | None = None,
                 fw_backend: str | None = None, tc_shim: bool | None = None,
                 debug_commands: bool = False) -> None:
        self.ns = ns
        self.base = Path(base)
        self.root = root or ""
        self.fw_backend = fw_backend
        self.tc_shim = csum_missing() if tc_shim is None else tc_shim
        self.debug_commands = debug_commands
        self.sock = self.base / "sock" / "libvirt-sock"
        self.uri = f"network:///system?socket={self.sock}"
        self.proc: subprocess.Popen | None = None

    # -- paths ----------------------------------------------------------------------------
    @property
    def hooks_dir(self) -> Path:
        return self.base / "etc" / "hooks" / "network.d"

    @property
    def log(self) -> Path:
        return self.base / "log" / "libvirtd.log"

    def _virsh_argv(self) -> list[str]:
        if self.root:
            return ["env", f"LD_LIBRARY_PATH={self.root}{LIBDIR}", f"{self.root}/usr/bin/virsh"]
        return ["virsh"]

    # -- life cycle -----------------------------------------------------------------------
    def _write_config(self) -> None:
        b = self.base
        for d in ("etc/qemu/networks/autostart", "etc/hooks/network.d", "run", "lib", "sock",
                  "log", "drivers", "shim"):
            (b / d).mkdir(parents=True, exist_ok=True)
        drv = b / "drivers" / Path(DRIVER).name
        if not drv.exists():
            drv.symlink_to(f"{self.root}{LIBDIR}/{DRIVER}")
        filters = "1:util.command 1:util.firewall 3:*" if self.debug_commands else "3:*"
        (b / "etc" / "libvirtd.conf").write_text(
            f'unix_sock_dir = "{b}/sock"\nunix_sock_ro_perms = "0700"\n'
            'unix_sock_rw_perms = "0700"\nunix_sock_admin_perms = "0700"\n'
            'auth_unix_ro = "none"\nauth_unix_rw = "none"\nlisten_tls = 0\nlisten_tcp = 0\n'
            f'log_level = 3\nlog_filters = "{filters}"\n'
            f'log_outputs = "1:file:{self.log}"\n')
        if self.fw_backend:
            (b / "etc" / "network.conf").write_text(
                f'firewall_backend = "{self.fw_backend}"\n')
        lines = ["#!/bin/sh", "set -e",
                 f"mount --bind {b}/etc /etc/libvirt",
                 f"mount --bind {b}/run /run/libvirt",
                 f"mount --bind {b}/lib /var/lib/libvirt"]
        if self.root:
            # dnsmasq runs libvirt's leases helper with a cleared environment, so
            # LD_LIBRARY_PATH does not reach it: overmount the library in this namespace.
            so = next(Path(f"{self.root}{LIBDIR}").glob("libvirt.so.0.*"))
            lines += [f"mount --bind {so} {os.path.realpath(LIBDIR + '/libvirt.so.0')}",
                      f"mount --bind {self.root}/usr/lib/libvirt /usr/lib/libvirt",
                      f"export LD_LIBRARY_PATH={self.root}{LIBDIR}"]
        if self.tc_shim:
            shim = b / "shim" / "tc"
            shim.write_text(
                "#!/bin/sh\n# no act_csum in this kernel: libvirt's DHCP checksum filter "
                "becomes a logged no-op\n"
                f'case " $* " in *" action csum "*) echo "tc $*" >> {b}/log/tc-shim.log; '
                "exit 0;; esac\nexec /usr/sbin/tc \"$@\"\n")
            shim.chmod(0o755)
            lines.append(f"export PATH={b}/shim:$PATH")
        lines += [f"export LIBVIRT_DRIVER_DIR={b}/drivers",
                  "export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent",
                  f"exec {self.root}/usr/sbin/libvirtd --config {b}/etc/libvirtd.conf "
                  f"--pid-file {b}/libvirtd.pid"]
        inner = b / "inner.sh"
        inner.write_text("\n".join(lines) + "\n")
        inner.chmod(0o700)

    def start(self, timeout: float = 20.0) -> "Libvirtd":
        self._write_config()
        for d in MOUNTS:
            os.makedirs(d, exist_ok=True)
        out = open(self.base / "log" / "stdout.log", "ab")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LC_ALL": "C"}
        self.proc = subprocess.Popen(
            self.ns.argv("unshare", "--mount", "--propagation", "private",
                         str(self.base / "inner.sh")),
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.sock.exists() and self.virsh("net-list", "--all", check=False).returncode == 0:
                return self
            time.sleep(0.05)
        log = (self.base / "log" / "stdout.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"confined libvirtd did not come up: {log}")

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL); its dnsmasq processes stay, as they do
        when a real libvirtd restarts (``kill_all`` ends them)."""
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        try:
            self.sock.unlink()
        except FileNotFoundError:
            pass

    def restart(self) -> "Libvirtd":
        self.stop()
        return self.start()

    def kill_all(self) -> None:
        """Stop the daemon and every process left in its namespace (dnsmasq)."""
        self.stop()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = subprocess.run(["ip", "netns", "pids", self.ns.name], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), sig)
                except (ProcessLookupError, ValueError):
                    pass
            if not pids:
                break
            time.sleep(0.2)

    # -- the client ---------------------------------------------------------------------
    def virsh(self, *args: str, check: bool = True, stdin: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess:
        """``virsh -q -c URI ARGS``; ``check`` raises with virsh's error on failure."""
        p = subprocess.run([*self._virsh_argv(), "-q", "-c", self.uri, *args], input=stdin,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"virsh {' '.join(args)}: {p.stderr.strip()}")
        return p

    def define(self, xml: str) -> None:
        path = self.base / "xml"
        path.mkdir(exist_ok=True)
        f = path / f"def-{time.monotonic_ns()}.xml"
        f.write_text(xml)
        self.virsh("net-define", str(f))

    def networks(self, all_: bool = True) -> list[str]:
        args = ["net-list", "--name"] + (["--all"] if all_ else [])
        return [n for n in self.virsh(*args).stdout.split() if n]

    def clear(self) -> None:
        """Destroy and undefine every network."""
        for n in self.networks(all_=False):
            self.virsh("net-destroy", n, check=False)
        for n in self.networks():
            self.virsh("net-undefine", n, check=False)
