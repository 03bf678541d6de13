"""X-Forwarded-For read as nginx's realip module does: the rightmost entry
that is not a trusted proxy, whatever the client put to the left of it."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterchat.protocol.forwarded import client_address, hop

TRUSTED = frozenset({"127.0.0.1", "10.0.0.5", "::1"})


@pytest.mark.parametrize(
    ("values", "client"),
    [
        (["192.0.2.7"], "192.0.2.7"),
        # nginx appended the client; whatever the client sent is to its left
        (["127.0.0.3, 192.0.2.7"], "192.0.2.7"),
        (["203.0.113.9, 192.0.2.7, 10.0.0.5"], "192.0.2.7"),  # through two of ours
        (["203.0.113.9", "192.0.2.7, 10.0.0.5"], "192.0.2.7"),  # two header lines
        (["127.0.0.1, ::1"], "127.0.0.1"),  # every hop trusted: the leftmost
        ([" 2001:DB8::1 ,  ,10.0.0.5"], "2001:db8::1"),  # normalised, empty skipped
        (["192.0.2.7:5555"], "192.0.2.7"),
        (["[2001:db8::2]:443, 10.0.0.5"], "2001:db8::2"),
        # junk the client sent, left of its real address, is never reached
        (["unknown, <script>, 192.0.2.7"], "192.0.2.7"),
        ([], None),
        ([""], None),
        # junk where the client should be: a proxy of ours is misconfigured
        (["192.0.2.7, unknown, 10.0.0.5"], None),
        (["example.com"], None),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(values: list[str], client: str | None) -> None:
    assert client_address(values, TRUSTED) == client


def test_hops_are_normalised_or_refused() -> None:
    assert hop(" 192.0.2.7 ") == "192.0.2.7"
    assert hop("[::1]") == "::1"
    assert hop("::ffff:192.0.2.7") == "::ffff:c000:207"
    for bad in ("", "unknown", "1.2.3", "[::1", "1.2.3.4:5:6x", "_hidden"):
        assert hop(bad) is None


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
junk = st.text(alphabet=st.characters(blacklist_characters=","), max_size=20)


@given(
    forged=st.lists(st.one_of(addresses, junk), max_size=6),
    real=addresses.filter(lambda a: a not in TRUSTED),
    proxies=st.lists(st.sampled_from(sorted(TRUSTED)), max_size=3),
)
def test_nothing_a_client_adds_on_the_left_changes_the_answer(
    forged: list[str], real: str, proxies: list[str]
) -> None:
    """What our proxies append (the real client, then each other) decides."""
    header = ", ".join([*forged, real, *proxies])
    assert client_address([header], TRUSTED) == str(ipaddress.ip_address(real))
