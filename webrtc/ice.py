"""ICE settings applied to aiortc/aioice: the servers a peer connection uses and the local
addresses offered as host candidates.

- aiortc falls back to Google's STUN server only when `iceServers` is None; we always pass a
  list, so `STUN_SERVERS=[]` really means "no STUN".
- aioice offers every interface address except 127.0.0.1 and has no option to choose; the
  configured `ICE_HOST_ADDRESSES` replace its lookup (process-wide, through `compat.aiortc`).
"""

from __future__ import annotations

from typing import Iterable, Optional

import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from compat.aiortc import use_host_addresses


def rtc_configuration(servers: Iterable) -> RTCConfiguration:
    """`servers`: objects with `urls`, `username`, `credential` (config.IceServer)."""
    return RTCConfiguration(iceServers=[
        RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers])


def local_addresses() -> set[str]:
    found = {"127.0.0.1", "::1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


def check_host_addresses(addresses: Optional[list[str]]) -> None:
    """Raise ValueError naming the addresses that do not belong to this host (changes nothing)."""
    unknown = [a for a in addresses or [] if a not in local_addresses()]
    if unknown:
        verb = "is not an address" if len(unknown) == 1 else "are not addresses"
        raise ValueError(f"{', '.join(unknown)} {verb} of this host")


def restrict_host_addresses(addresses: Optional[list[str]]) -> None:
    """Offer only `addresses` as ICE host candidates (empty or None: every interface).
    Raises ValueError naming an address that does not belong to this host."""
    check_host_addresses(addresses)
    use_host_addresses(list(addresses) if addresses else None)
