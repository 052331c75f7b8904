"""The state file: what it keeps of a generation across versions of vnetfw."""

from __future__ import annotations

import json

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
