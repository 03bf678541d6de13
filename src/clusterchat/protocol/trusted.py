"""The proxies whose word on a client's address is believed: exact
addresses and networks (``10.0.0.0/8``), since a CDN or a fleet of load
balancers connects from ranges, not from a handful of addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """``address in trusted`` for normalised address strings. Exact
    addresses are a set lookup (the common case, on every connection);
    networks are tried only when some were configured."""

    __slots__ = ("_exact", "_networks", "specs")

    def __init__(self, specs: Iterable[str]) -> None:
        """Raises ValueError naming the entry that is neither an address
        nor a network."""
        exact: set[str] = set()
        networks: list[Network] = []
        self.specs = tuple(s.strip() for s in specs if s.strip())
        for spec in self.specs:
            try:
                network = ipaddress.ip_network(spec, strict=False)
            except ValueError:
                raise ValueError(f"not an address or network (like 10.0.0.0/8): {spec!r}") from None
            if network.num_addresses == 1:
                exact.add(str(network.network_address))
            else:
                networks.append(network)
        self._exact = frozenset(exact)
        self._networks = tuple(networks)

    def __contains__(self, address: object) -> bool:
        if address in self._exact:
            return True
        if not isinstance(address, str):
            return False
        if address.startswith("::ffff:"):  # IPv4 on a dual-stack listener
            return address[7:] in self
        if not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def __bool__(self) -> bool:
        return bool(self._exact or self._networks)
