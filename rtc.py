"""WebRTC settings applied to aiortc/aioice: ICE servers and the host addresses offered.

- aiortc falls back to Google's STUN server only when `iceServers` is None; we always pass
  a list, so `STUN_SERVERS=[]` really means "no STUN".
- aioice offers every interface address except 127.0.0.1 and has no option to choose;
  `ICE_HOST_ADDRESSES` replaces its address lookup (process-wide) with the configured list.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import aioice.ice
import ifaddr
from aiortc import RTCConfiguration, RTCIceServer

from config import IceServer, InvalidSettings, Settings

_original_get_host_addresses = aioice.ice.get_host_addresses


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[_to_aiortc(s) for s in settings.ice_servers])


def _to_aiortc(server: IceServer) -> RTCIceServer:
    return RTCIceServer(urls=server.urls, username=server.username, credential=server.credential)


def local_addresses() -> set[str]:
    found = {"127.0.0.1", "::1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


def restrict_host_addresses(addresses: Optional[list[str]]) -> None:
    """Offer only `addresses` as ICE host candidates (empty or None: every interface)."""
    if not addresses:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    unknown = [a for a in addresses if a not in local_addresses()]
    if unknown:
        raise InvalidSettings(f"Invalid setting ICE_HOST_ADDRESSES: {', '.join(unknown)} is not an address of this host")
    chosen = list(addresses)

    def configured_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ipaddress.ip_address(a).version == 6 else use_ipv4)]

    aioice.ice.get_host_addresses = configured_addresses
