"""--trusted-proxy: exact addresses and networks, and a typo refused."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol.trusted import TrustedProxies


def test_addresses_and_networks() -> None:
    trusted = TrustedProxies(["127.0.0.1", " ::1 ", "10.0.0.0/8", "2001:db8::/32", ""])
    assert trusted.specs == ("127.0.0.1", "::1", "10.0.0.0/8", "2001:db8::/32")
    for inside in ["127.0.0.1", "::1", "10.0.0.0", "10.255.255.255", "2001:db8::7"]:
        assert inside in trusted, inside
    for outside in ["127.0.0.2", "11.0.0.1", "2001:db9::1", "unknown", "", None]:
        assert outside not in trusted, outside


def test_nothing_trusted() -> None:
    trusted = TrustedProxies([""])
    assert not trusted and "127.0.0.1" not in trusted


@pytest.mark.parametrize("typo", ["10.0.0.0/33", "10.0.0", "localhost", "1.2.3.4/8/1"])
def test_a_typo_is_refused_by_name(typo: str) -> None:
    with pytest.raises(ValueError, match=typo.replace(".", r"\.")):
        TrustedProxies(["127.0.0.1", typo])


@given(st.ip_addresses(v=4), st.integers(0, 32))
def test_membership_is_the_network_s(address: ipaddress.IPv4Address, prefix: int) -> None:
    network = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    trusted = TrustedProxies([str(network)])
    assert str(address) in trusted
    outside = int(network.broadcast_address) + 1
    if outside < 2**32:
        assert str(ipaddress.IPv4Address(outside)) not in trusted


def test_ipv4_on_a_dual_stack_listener_is_its_ipv4_address() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.0.0.0/8"])
    assert "::ffff:127.0.0.1" in trusted and "::ffff:10.9.8.7" in trusted
    assert "::ffff:11.0.0.1" not in trusted and "::ffff:zz" not in trusted
