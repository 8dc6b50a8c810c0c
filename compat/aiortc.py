"""Every use of aiortc's and aioice's private internals, in one module, checked at start-up.

aiortc is pinned (`PINNED`). Each internal this project relies on is listed in `INTERNALS` with
a check; `self_check()` runs when the app is built and stops start-up with one line naming the
missing internal and the pinned version. A renamed internal must never degrade silently (a
renamed `_send_keyframe` would leave viewers frozen until the next periodic keyframe).

- `RTCRtpSender._send_keyframe`: aiortc calls it on PLI/FIR, but on the path where a track
  hands it encoded packets it only sets a flag its own (unused) encoder reads. We point it at
  the shared encoder (`route_keyframe_requests`).
- `aioice.ice.get_host_addresses`: aioice offers every interface but 127.0.0.1 and has no
  option to choose; we replace the lookup process-wide (`use_host_addresses`).
- `RemoteStreamTrack._queue`: the unbounded queue aiortc's decoder fills; camera mode drains it
  down to the newest frame (`receive_queue`).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Callable, Optional

import aioice.ice
import aiortc
from aiortc import RTCRtpSender
from aiortc.rtcrtpreceiver import RemoteStreamTrack

PINNED = "aiortc==1.16.0"

_original_get_host_addresses = aioice.ice.get_host_addresses


class IncompatibleLibrary(SystemExit):
    """Start-up stops: an internal this project relies on is gone (a clean exit with one line)."""


# -- the internals ------------------------------------------------------------------------
def route_keyframe_requests(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Make the sender's PLI/FIR handling call `callback` (the shared encoder's request)."""
    sender._send_keyframe = callback


def use_host_addresses(addresses: Optional[list[str]]) -> None:
    """Offer only `addresses` as ICE host candidates (None: aioice's own lookup)."""
    if addresses is None:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return
    import ipaddress

    chosen = list(addresses)

    def configured_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv6 if ipaddress.ip_address(a).version == 6 else use_ipv4)]

    aioice.ice.get_host_addresses = configured_addresses


def receive_queue(track) -> asyncio.Queue:
    """The queue aiortc's decoder thread fills with a remote track's decoded frames."""
    return track._queue


# -- the self-check -------------------------------------------------------------------------
def _calls(function, name: str) -> bool:
    """Whether `function`'s own code refers to `name` (a call we rely on aiortc making)."""
    code = getattr(function, "__code__", None)
    return code is not None and name in code.co_names


def _sender_hook() -> bool:
    # the hook only helps if aiortc still calls it when a PLI/FIR arrives
    return (callable(getattr(RTCRtpSender, "_send_keyframe", None))
            and _calls(getattr(RTCRtpSender, "_handle_rtcp_packet", None), "_send_keyframe"))


def _host_lookup() -> bool:
    # aioice must still look the addresses up through this module-level name when gathering
    return (callable(getattr(aioice.ice, "get_host_addresses", None))
            and list(inspect.signature(_original_get_host_addresses).parameters) == ["use_ipv4", "use_ipv6"]
            and _calls(getattr(aioice.ice.Connection, "gather_candidates", None), "get_host_addresses"))


def _remote_queue() -> bool:
    return isinstance(getattr(RemoteStreamTrack(kind="video"), "_queue", None), asyncio.Queue)


INTERNALS: dict[str, Callable[[], bool]] = {
    "aiortc.RTCRtpSender._send_keyframe": _sender_hook,
    "aioice.ice.get_host_addresses": _host_lookup,
    "aiortc.rtcrtpreceiver.RemoteStreamTrack._queue": _remote_queue,
}


def self_check() -> None:
    """Raise IncompatibleLibrary (one line) if an internal listed in INTERNALS is missing."""
    for name, present in INTERNALS.items():
        try:
            ok = present()
        except Exception:  # a check that cannot even run means the internal has changed
            ok = False
        if not ok:
            raise IncompatibleLibrary(
                f"Incompatible aiortc {aiortc.__version__}: internal {name} is missing; "
                f"this version of VisionGuard needs {PINNED} (pip install -r requirements.txt)")
