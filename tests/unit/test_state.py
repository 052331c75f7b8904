"""The state file: what it keeps of a generation across versions of vnetfw."""

from __future__ import annotations

import json

import pytest

from vnetfw import __version__
from vnetfw.backends.nfgen import Generation
from vnetfw.state import State, StateStore


def test_a_generation_is_trusted_only_from_the_same_vnetfw(tmp_path):
    store = StateStore(tmp_path)
    gen = Generation(42, 7, "boot")
    store.save(State("nftables", "default", "VNETFW", {}, gen))
    assert store.load().generation == gen
    # Another version's plan may differ from ours: its "nothing changed" proves nothing.
    d = json.loads(store.path.read_text())
    assert d["vnetfw"] == __version__
    d["vnetfw"] = "0.0.1"
    store.path.write_text(json.dumps(d))
    st = store.load()
    assert st.generation is None and st.backend == "nftables"
    del d["vnetfw"]
    store.path.write_text(json.dumps(d))
    assert store.load().generation is None


def test_recorded_backend_reads_no_networks(tmp_path):
    store = StateStore(tmp_path)
    assert store.recorded_backend() is None
    store.save(State("iptables-legacy", "default", "VNETFW", {}, None))
    assert store.recorded_backend() == "iptables-legacy"
    store.path.write_text("{not json")
    assert store.recorded_backend() is None


def test_an_unknown_network_in_remove_lists_a_few_active_ones(tmp_path):
    """On a host with many networks the error is one line, not a page of names."""
    from vnetfw.engine import Engine
    from vnetfw.errors import DefinitionError
    from vnetfw.model import Mode, Network
    from vnetfw.state import State, StateStore
    store = StateStore(tmp_path)
    nets = {f"n{k:03}": Network(f"n{k:03}", Mode.OPEN, bridge=f"br{k}") for k in range(50)}
    store.save(State("iptables-nft", "default", "VNETFW", nets, None))
    with pytest.raises(DefinitionError) as e:
        Engine(backend="iptables-nft", state_dir=tmp_path).remove(["nope"])
    msg = str(e.value)
    assert "not active: nope" in msg and "n000, n001" in msg and "42 more" in msg
    assert "n049" not in msg
