"""The backend registry: the names, what ``--backend`` offers, and what ``auto`` means."""

from __future__ import annotations

import pytest

from vnetfw import cli
from vnetfw.backends import registry
from vnetfw.backends.runner import Runner
from vnetfw.errors import BackendError


def test_the_cli_offers_exactly_the_registry_s_names():
    opt = next(a for a in cli.build_parser()._actions if "--backend" in a.option_strings)
    assert tuple(opt.choices) == registry.CHOICES == ("auto",) + registry.NAMES


def test_auto_keeps_the_recorded_backend_and_asks_only_for_auto():
    assert registry.requested("auto", lambda: "iptables-legacy") == "iptables-legacy"
    assert registry.requested("auto", lambda: None) == registry.AUTO

    def never() -> str:
        raise AssertionError("a named backend must not read the state")
    assert registry.requested("nftables", never) == "nftables"


def test_render_s_auto_probes_nothing():
    assert registry.unprobed("auto") == "nftables"
    assert registry.unprobed("iptables-legacy") == "iptables-legacy"


@pytest.mark.parametrize("name", registry.NAMES)
def test_every_name_is_a_backend_of_that_name(name):
    assert registry.get_backend(name, Runner(None)).name == name


def test_an_unknown_name_says_what_is_known():
    with pytest.raises(BackendError, match="expected auto, nftables, iptables"):
        registry.get_backend("ipchains", Runner(None))
