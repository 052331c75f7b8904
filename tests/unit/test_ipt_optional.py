"""iptables' evidence that the kernel lacks the CHECKSUM target (``lacks_optional``),
against a FakeRunner: the tool's words, or its ``-j CHECKSUM -h`` probe, or nothing."""

from __future__ import annotations

from tests.fakes import FakeRunner
from vnetfw.backends.iptables import IptablesBackend
from vnetfw.errors import BackendError
from vnetfw.plan import PROFILES, plan
from vnetfw.sources.toml import parse_toml

NET = parse_toml("""
[[network]]
name = "n1"
bridge = "vbr-n1"
mode = "nat"
ip = [{ address = "10.30.1.1", prefix = 24, dhcp = true }]
""", "n.toml")
DESIRED = plan(NET, PROFILES["default"])
PROBE = ("iptables-nft", "-j", "CHECKSUM", "-h")
HELP = "iptables v1.8.9\n\nUsage: ...\n"
CHECKSUM_HELP = HELP + "\nCHECKSUM target options\n  --checksum-fill\t\tFill in packet checksum.\n"


def backend(answers) -> IptablesBackend:
    return IptablesBackend(FakeRunner(answers), flavour="iptables-nft")  # type: ignore[arg-type]


def test_the_tools_own_words_naming_the_target_are_evidence():
    b = backend({})
    err = BackendError("iptables-nft: change failed and was rolled back: iptables-nft-restore "
                       "failed: Warning: Extension CHECKSUM revision 0 not supported, missing "
                       "kernel module?; iptables-nft-restore v1.8.9 (nf_tables): unknown "
                       'option "--checksum-fill"; Error occurred at line: 9')
    assert b.lacks_optional(err, DESIRED) == ("Extension CHECKSUM revision 0 not supported, "
                                              "missing kernel module?")
    assert b.runner.ran == []                   # no probe needed


def test_words_naming_another_target_are_not():
    b = backend({PROBE: CHECKSUM_HELP})
    err = BackendError("iptables-restore: Couldn't load target `NO_SUCH':No such file")
    assert b.lacks_optional(err, DESIRED) is None
    assert [argv for argv, _ in b.runner.ran] == [PROBE]


def test_a_probe_that_cannot_load_the_target_is_evidence():
    b = backend({PROBE: HELP})
    why = b.lacks_optional(BackendError("iptables-nft-restore: transient failure"), DESIRED)
    assert why is not None and "CHECKSUM" in why


def test_a_probe_that_fails_to_run_is_no_evidence():
    b = backend({PROBE: FakeRunner.fail(list(PROBE), "iptables: out of memory")})
    assert b.lacks_optional(BackendError("transient failure"), DESIRED) is None


def test_a_probe_that_knows_the_target_means_the_refusal_stands():
    b = backend({PROBE: CHECKSUM_HELP})
    assert b.lacks_optional(BackendError("ip6tables-nft-restore: transient failure"),
                            DESIRED) is None
