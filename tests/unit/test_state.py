"""The state file: what it keeps of a generation across versions of vnetfw."""

from __future__ import annotations

import json
import os

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


def test_a_network_is_written_back_as_read_only_while_it_is_the_same_object(tmp_path):
    """Saving reuses a network's dict as read from the file (no to_dict for 1,000 networks)
    only while the state still holds the very object made of it: a changed network, one
    that replaced it, or a new one is written from its own values."""
    import dataclasses

    from vnetfw.model import IPBlock, Mode, Network, parse_ip
    store = StateStore(tmp_path)
    nets = {n: Network(n, Mode.NAT, f"br-{n}", ips=(IPBlock(parse_ip(f"10.0.{i}.1"), 24),))
            for i, n in enumerate(("a", "b", "c"))}
    store.save(State("nftables", "default", "VNETFW", dict(nets)))
    st = store.load()
    assert set(st.loaded) == {"a", "b", "c"}
    st.networks["b"] = dataclasses.replace(st.networks["b"], bridge="br-new")     # changed
    st.networks["d"] = Network("d", Mode.ROUTE, "br-d")                            # new
    del st.networks["c"]                                                           # gone
    store.save(st)
    again = store.load()
    assert sorted(again.networks) == ["a", "b", "d"]
    assert again.networks["b"].bridge == "br-new" and again.networks["d"].mode is Mode.ROUTE
    assert again.networks["a"] == nets["a"]


def test_a_generation_is_trusted_only_in_the_file_as_vnetfw_wrote_it(tmp_path):
    """The seal: state.json edited by hand (here: a network dropped, the generation left
    as it was) no longer vouches for the firewall, so the next command reads it."""
    from vnetfw.model import Mode, Network
    store = StateStore(tmp_path)
    gen = Generation(42, 7, "boot")
    nets = {n: Network(n, Mode.OPEN, bridge=f"br-{n}") for n in ("a", "b")}
    store.save(State("nftables", "default", "VNETFW", nets, gen))
    assert store.load().generation == gen
    raw = store.path.read_bytes()
    d = json.loads(raw)
    d["networks"] = [n for n in d["networks"] if n["name"] != "b"]
    store.path.write_text(json.dumps(d, separators=(",", ":"), sort_keys=True) + "\n")
    st = store.load()
    assert list(st.networks) == ["a"] and st.generation is None
    assert raw.startswith(b'{"_crc32":"')
    for edit in (raw.replace(b'"VNETFW"', b'"VNETFX"'),             # any byte
                 raw.replace(b'"_crc32":"', b'"_crc32": "'),         # even a space
                 b"{" + raw[len('{"_crc32":"') + 10:]):               # or without it
        assert edit != raw
        store.path.write_bytes(edit)
        assert store.load().generation is None
    store.path.write_bytes(raw)                                      # as written: trusted
    assert store.load().generation == gen
    # what vnetfw saves of what it loaded is sealed again
    st = store.load()
    del st.networks["b"]
    store.save(st)
    assert store.load().generation == gen and list(store.load().networks) == ["a"]


def test_a_torn_record_of_a_change_in_flight_reads_as_unknown(tmp_path):
    from vnetfw.inflight import ChangeWindow, Record
    w = ChangeWindow(tmp_path)
    assert w.pending() is None
    (tmp_path / "inflight.json").write_text('{"command": "apply", "pid": 12')
    rec = w.pending()
    assert rec is not None and not rec.known and "unreadable" in rec.describe()


def test_the_change_window_writes_its_record_once_and_keeps_a_dead_writers(tmp_path):
    from vnetfw.inflight import ChangeWindow, record_for
    store = StateStore(tmp_path)
    w = ChangeWindow(tmp_path)
    made = []

    def rec():
        made.append(1)
        return record_for("apply", store.load(), "nftables", "default", "VNETFW", {})
    w.open(rec)
    w.open(rec)
    assert made == [1] and w.pending().command == "apply"
    w.close(keep=True)                      # as a writer that died would leave it
    w2 = ChangeWindow(tmp_path)
    w2.open(rec)                            # a recovery keeps the record it works on
    assert made == [1] and w2.record.pid == os.getpid()
    w2.close()
    assert w2.pending() is None
