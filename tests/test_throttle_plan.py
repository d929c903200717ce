"""Pure parts of the throttle plugin: params, rates, port prefixes, u32 keys, the HTB tree, ownership, policy."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from pydantic import ValidationError

from agent.remediation.policy import load_policy_text, validate_params
from remediations.htb import (
    ETH_P_IP,
    ETH_P_IPV6,
    ROOT,
    Selector,
    build_tree,
    key_bytes,
    owner,
    parse_ports,
    parse_rate,
    port_prefixes,
    selector_filters,
    snapshot,
    tree_signature,
)
from remediations.tc import Qdisc, U32Filter, _u32_keys
from remediations.throttle import Config, Params, Refused, Throttle, check_device

ROOT_PARENT = 0xFFFFFFFF


@pytest.mark.parametrize("name", ["eth0", "ens1f0np0", "bond0.100", "ib0", "v_a-1", "a" * 15])
def test_device_names_accepted(name):
    assert check_device(name) == name


@pytest.mark.parametrize("name", ["", "a" * 16, "eth0; reboot", "../eth0", "eth0/x", ".", "..", "-eth0", "eth 0",
                                  "eth0\n", "cls\n", "$(id)", "{{ $labels.device }}"])
def test_device_names_refused(name):
    with pytest.raises(ValueError):
        check_device(name)
    with pytest.raises(ValidationError):
        Params.model_validate({"device": name, "rate": "1Mbit", "dport": "1"})


@pytest.mark.parametrize("text,expected", [
    ("20Mbit", (20e6, False)), ("20mbit", (20e6, False)), ("1.5Gbit", (1.5e9, False)), ("800kbit", (8e5, False)),
    ("1Tbit", (1e12, False)), ("5000000", (5e6, False)), (5000000, (5e6, False)), ("25%", (25.0, True)),
    (" 0.5 % ", (0.5, True)), ("123bit", (123.0, False)),
])
def test_parse_rate(text, expected):
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1Mbit", "20MB", "20 mbps", "101%", "fast", "1e9", True])
def test_parse_rate_refuses(text):
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize("lo,hi", [(0, 65535), (5001, 5001), (5000, 5100), (1, 65534), (1024, 2047), (0, 0),
                                   (65535, 65535), (4999, 5002), (12345, 54321)])
def test_port_prefixes_cover_exactly_the_range(lo, hi):
    prefixes = port_prefixes(lo, hi)
    covered = sorted(p for v, m in prefixes for p in range(65536) if p & m == v)
    assert covered == list(range(lo, hi + 1))
    assert all(v & ~m & 0xFFFF == 0 for v, m in prefixes)        # values are prefix-aligned
    assert len(prefixes) <= 30                                    # at most 2 * 15 blocks


def test_parse_ports():
    assert parse_ports("5001") == (5001, 5001)
    assert parse_ports("5000-5100") == (5000, 5100)
    assert parse_ports(22) == (22, 22)
    assert parse_ports(None) is None
    for bad in ("5100-5000", "70000", "a", "1-", "-1", "1-2-3", "5 000"):
        with pytest.raises(ValueError):
            parse_ports(bad)


def _packet_v4(proto: int, sport: int, dport: int, tos: int = 0, dst: str = "10.231.0.2", ihl: int = 5,
               frag: int = 0) -> bytes:
    hdr = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, tos, 40, 0, frag, 64, proto, 0, bytes(4),
                      ipaddress.ip_address(dst).packed) + bytes(4 * (ihl - 5))
    return hdr + struct.pack(">HH", sport, dport) + bytes(16)


def _packet_v6(proto: int, sport: int, dport: int, tclass: int = 0, dst: str = "fd00::2") -> bytes:
    first = (6 << 28) | (tclass << 20)
    hdr = struct.pack(">IHBB16s16s", first, 20, proto, 64, bytes(16), ipaddress.ip_address(dst).packed)
    return hdr + struct.pack(">HH", sport, dport) + bytes(16)


def _matches(keys, packet: bytes) -> bool:
    """What the kernel's u32 classifier does with one key list at the network header."""
    return all(off + 4 <= len(packet) and struct.unpack_from(">I", packet, off)[0] & mask == val & mask
               for off, mask, val in keys)


def _selector_matches(sel: Selector, family: int, packet: bytes) -> bool:
    return any(fam == family and _matches(keys, packet) for fam, keys in selector_filters(sel))


def test_u32_keys_match_the_packets_they_should():
    sel = Selector(rate="20Mbit", protocol="tcp", dport="5000-5100")
    assert _selector_matches(sel, ETH_P_IP, _packet_v4(6, 40000, 5000))
    assert _selector_matches(sel, ETH_P_IP, _packet_v4(6, 40000, 5100))
    assert not _selector_matches(sel, ETH_P_IP, _packet_v4(6, 40000, 5101))
    assert not _selector_matches(sel, ETH_P_IP, _packet_v4(6, 5000, 4999))       # sport is not dport
    assert not _selector_matches(sel, ETH_P_IP, _packet_v4(17, 40000, 5050))     # udp
    assert not _selector_matches(sel, ETH_P_IP, _packet_v4(6, 40000, 5050, ihl=6))   # options: ports moved
    assert not _selector_matches(sel, ETH_P_IP, _packet_v4(6, 40000, 5050, frag=3))  # later fragment
    assert _selector_matches(sel, ETH_P_IPV6, _packet_v6(6, 40000, 5050))
    assert not _selector_matches(sel, ETH_P_IPV6, _packet_v6(17, 40000, 5050))


def test_u32_keys_any_protocol_sport_dscp_and_cidr():
    anyp = Selector(rate="1Gbit", sport="873")
    assert _selector_matches(anyp, ETH_P_IP, _packet_v4(6, 873, 1))
    assert _selector_matches(anyp, ETH_P_IP, _packet_v4(17, 873, 1))
    assert not _selector_matches(anyp, ETH_P_IP, _packet_v4(1, 873, 1))           # icmp carries no ports
    dscp = Selector(rate="1Gbit", dscp=10)                                       # AF11
    assert _selector_matches(dscp, ETH_P_IP, _packet_v4(6, 1, 2, tos=10 << 2 | 1))   # ECN bits ignored
    assert not _selector_matches(dscp, ETH_P_IP, _packet_v4(6, 1, 2, tos=12 << 2))
    assert _selector_matches(dscp, ETH_P_IPV6, _packet_v6(6, 1, 2, tclass=10 << 2 | 2))
    assert not _selector_matches(dscp, ETH_P_IPV6, _packet_v6(6, 1, 2, tclass=46 << 2))
    net = Selector(rate="1Gbit", dst="10.231.8.0/21")
    assert [fam for fam, _ in selector_filters(net)] == [ETH_P_IP]
    assert _selector_matches(net, ETH_P_IP, _packet_v4(6, 1, 2, dst="10.231.15.255"))
    assert not _selector_matches(net, ETH_P_IP, _packet_v4(6, 1, 2, dst="10.231.16.0"))
    net6 = Selector(rate="1Gbit", dst="fd00:1:2::/56", dport="443", protocol="tcp")
    assert [fam for fam, _ in selector_filters(net6)] == [ETH_P_IPV6]
    assert _selector_matches(net6, ETH_P_IPV6, _packet_v6(6, 1, 443, dst="fd00:1:2:ff::1"))
    assert not _selector_matches(net6, ETH_P_IPV6, _packet_v6(6, 1, 443, dst="fd00:1:2:100::1"))
    assert not _selector_matches(net6, ETH_P_IPV6, _packet_v6(6, 1, 444, dst="fd00:1:2::1"))


def test_too_many_filters_refused():
    with pytest.raises(ValueError, match="u32 filters"):
        selector_filters(Selector(rate="1Gbit", sport="1-65534", dport="1-65534"))


def test_key_bytes_is_split_independent():
    assert key_bytes([(20, 0x0000FFFF, 0x1388)]) == key_bytes([(22, 0xFFFF0000, 0x13880000)]) == \
        ((22, 0xFF, 0x13), (23, 0xFF, 0x88))
    assert key_bytes([(0, 0x0F000000, 0x05000000), (8, 0x00FF0000, 0x00060000)]) == ((0, 0x0F, 5), (9, 0xFF, 6))
    assert key_bytes([(4, 0, 0)]) == ()


def test_u32_selector_keys_decoded_from_raw_bytes():
    class Sel(dict):      # the shape of pyroute2's nla: raw buffer, offset, decoded header fields
        pass

    raw = bytes(8) + struct.pack("=HH", 20 + 32, 5) + bytes(16)
    raw += struct.pack(">II", 0x0F000000, 0x05000000) + struct.pack("=ii", 0, 0)
    raw += struct.pack(">II", 0x0000FFFF, 0x00001388) + struct.pack("=ii", 20, 0)
    sel = Sel(nkeys=2)
    sel.data, sel.offset = raw, 8
    assert _u32_keys(sel) == ((0, 0x0F000000, 0x05000000), (20, 0x0000FFFF, 0x1388))
    assert U32Filter(10, ETH_P_IP, ROOT | 0x10, _u32_keys(sel)).keys[1][0] == 20


def test_build_tree_rates_floor_and_percent():
    sels = [Selector(name="ckpt", rate="10%", dport="5001"), Selector(name="tiny", rate="10kbit", dscp=8)]
    tree, notes = build_tree("eth0", sels, speed_bits=100e9, min_rate=1e6, unlimited=1e12)
    assert [(c["name"], c["classid"], c["rate_bits"]) for c in tree["classes"]] == \
        [("ckpt", ROOT | 0x10, 10_000_000_000), ("tiny", ROOT | 0x11, 1_000_000)]
    assert tree["default"] == ROOT | 0xFFFF and tree["default_rate_bits"] == 10**12
    assert notes == ["class tiny: 10Kbit raised to the floor 1Mbit"]
    prios = [f["prio"] for c in tree["classes"] for f in c["filters"]]
    assert len(set(zip(prios, [f["protocol"] for c in tree["classes"] for f in c["filters"]], strict=True))) \
        == len(set(prios))                                   # one protocol per filter priority (kernel rule)
    with pytest.raises(Refused) as err:
        build_tree("veth0", sels, speed_bits=None, min_rate=1e6, unlimited=1e12)
    assert err.value.reason == "link_speed_unknown"
    tree2, notes2 = build_tree("eth0", [Selector(rate="200Gbit", dport="1")], 100e9, 1e6, 1e12)
    assert "caps nothing" in notes2[0]
    assert tree_signature(tree) == tree_signature(build_tree("eth0", sels, 100e9, 1e6, 1e12)[0])
    assert tree_signature(tree) != tree_signature(tree2)


def test_owner_of_an_egress_tree():
    def q(kind, handle, parent=ROOT_PARENT):
        return Qdisc(kind, handle, parent)

    assert owner([q("noqueue", 0)]) == "default"
    assert owner([q("pfifo_fast", 0)]) == "default"
    assert owner([q("mq", 0), *(q("fq_codel", 0, 1 + i) for i in range(4))]) == "default"
    assert owner([q("mq", 0), q("fq_codel", 0, 1), q("fq", 0x80010000, 2)]) == "foreign"   # a tuned child
    assert owner([q("fq_codel", 0x80010000)]) == "foreign"                                 # set explicitly
    assert owner([q("tbf", 0x10000)]) == "foreign"
    assert owner([q("htb", ROOT), q("pfifo", 0x80020000, ROOT | 0x10)]) == "ours"
    assert owner([q("htb", 0x10000)]) == "foreign"                                         # someone else's htb
    assert owner([q("noqueue", 0), q("clsact", 0xFFFF0000, 0xFFFFFFF1)]) == "default"      # ingress untouched
    assert owner([]) == "none"
    assert snapshot([q("mq", 0), q("pfifo_fast", 0, 2), q("pfifo_fast", 0, 1)]) == \
        [["mq", 0, ROOT_PARENT], ["pfifo_fast", 0, 1], ["pfifo_fast", 0, 2]]


def test_params_flat_form_and_validation():
    p = Params.model_validate({"device": "eth0", "rate": "20Mbit", "dport": "5001", "dscp": "8"})
    assert p.classes == [Selector(rate="20Mbit", dport="5001", dscp=8)]
    full = Params.model_validate({"device": "eth0", "duration": "15m", "allow_default_route": "true",
                                  "classes": [{"name": "a", "rate": "1Gbit", "dst": "10.231.0.9/30"},
                                              {"name": "b", "rate": "5%", "protocol": "udp"}]})
    assert full.allow_default_route is True and full.classes[0].dst == "10.231.0.8/30"
    bad = [
        {"device": "eth0", "rate": "20Mbit"},                                       # selects nothing
        {"device": "eth0", "rate": "fast", "dport": "1"},
        {"device": "eth0", "rate": "1Mbit", "dport": "1", "classes": []},           # both forms
        {"device": "eth0", "classes": [{"name": "x", "rate": "1Mbit", "dport": "1"}] * 2},   # duplicate names
        {"device": "eth0", "classes": [{"rate": "1Mbit", "dport": str(i)} for i in range(9)]},   # > 8 classes
        {"device": "eth0", "rate": "1Mbit", "dscp": 64},
        {"device": "eth0", "rate": "1Mbit", "dst": "10.231.0.300/24"},
        {"device": "eth0", "rate": "1Mbit", "dport": "1", "duration": "0"},
        {"device": "eth0", "rate": "1Mbit", "dport": "1", "name": "a b"},
        {"device": "eth0", "rate": "1Mbit", "dport": "1", "name": "a\n"},
        {"device": "eth0", "rate": "1Mbit", "dport": "1", "shell": "x"},
    ]
    for params in bad:
        with pytest.raises(ValidationError):
            Params.model_validate(params)


def test_config_and_link_speed_from_sysfs(tmp_path):
    from agent.core.paths import Paths

    for name, text in (("eth0", "100000\n"), ("veth0", "-1\n"), ("lo", "garbage")):
        d = tmp_path / "class" / "net" / name
        d.mkdir(parents=True)
        (d / "speed").write_text(text)
    t = Throttle(Config(min_rate="5Mbit", max_duration="1h", default_duration="2h"), paths=Paths(sysfs=str(tmp_path)))
    assert t.link_speed_bits("eth0") == 100e9
    assert t.link_speed_bits("veth0") is None and t.link_speed_bits("lo") is None
    assert t.link_speed_bits("nosuch") is None
    assert t.min_rate == 5e6 and t.default_duration == 3600.0     # default capped by max_duration
    with pytest.raises(ValidationError):
        Config(min_rate="10%")


def test_policy_with_templated_device_validates():
    text = """
routes:
  - name: network-congestion
    matchers: ['alertname="NetworkLinkSaturated"']
    steps:
      - action: throttle
        params: {device: "{{ $labels.device }}", rate: "25%", protocol: tcp, dport: "5000-5100"}
"""
    policy = load_policy_text(text, "p.yml")
    assert validate_params(policy, {"throttle": Throttle}) == ([], [])
    bad = load_policy_text(text.replace('"25%"', '"25 furlongs"'), "p.yml")
    errors, _ = validate_params(bad, {"throttle": Throttle}, filename="p.yml")
    assert len(errors) == 1 and "rate" in errors[0] and errors[0].startswith("p.yml:")


def test_the_policy_in_the_docs_validates():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "throttle.md").read_text()
    text = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    policy = load_policy_text(text, "docs/throttle.md")
    assert validate_params(policy, {"throttle": Throttle}, filename="docs/throttle.md") == ([], [])
    config = Config.model_validate(policy.plugins["throttle"])
    step = policy.routes[0].steps[0]
    from agent.remediation.policy import render

    params = Params.model_validate(render(step.params, {"device": "ens1f0"}))
    assert params.device == "ens1f0" and [c.name for c in params.classes] == ["checkpoint", "dataset", "bulk-dscp"]
    tree, _ = build_tree(params.device, params.classes, 100e9, parse_rate(config.min_rate)[0], 1e12)
    assert [c["rate_bits"] for c in tree["classes"]] == [25_000_000_000, 2_000_000_000, 10_000_000_000]


def test_expired_counts_from_the_journaled_start():
    from agent.core.plugin import Entry, Plan

    def entry(eid: int, ts: float, expires: float, action: str = "throttle") -> Entry:
        params = {"device": "eth0", "tree": {}, "expires_after": expires}
        plan = Plan(action=action, target="netdev/eth0", params=params, changes=[], reversible=True)
        return Entry(id=eid, ts=ts, updated=ts, op="apply", action=action, target="netdev/eth0", status="succeeded",
                     mode="enforce", reason="", fingerprint="", alertname="", route="", step=0, plan=plan.to_dict(),
                     output="", parent=None)

    t = Throttle(clock=lambda: 10_000.0)
    active = [entry(1, 8_000.0, 1800.0), entry(2, 9_000.0, 1800.0), entry(3, 0.0, 60.0, action="rebalance")]
    assert t.expired(active) == [1]
    assert t.expired(active, now=10_800.0) == [1, 2]
