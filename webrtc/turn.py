"""Time-limited TURN credentials in coturn's REST-API scheme (`use-auth-secret`), so no static
TURN password is handed to every browser.

With a shared secret (`TURN_SECRET`, coturn's `static-auth-secret`):

    username   = "<expiry unix s>:<subject>"
    credential = base64(HMAC-SHA1(secret, username))

coturn recomputes the credential from the username and refuses a username whose expiry has
passed. The expiry is checked when a relay is set up (allocation), not for the whole life of
an established relay. `with_credentials` applies this to a list of ICE servers:

- an entry with a `turn:`/`turns:` URL and no static `username` + `credential` gets generated
  ones (a lone username is replaced);
- an entry with both keeps them (static `TURN_SERVERS` credentials stay supported);
- STUN entries are left as they are; without a secret nothing changes.

`server_configuration(settings)` is the same for the server's own peer connections (subject
`visionguard-server`), fresh credentials for every peer connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from aiortc import RTCConfiguration

from webrtc.ice import rtc_configuration

SERVER_SUBJECT = "visionguard-server"


@dataclass(frozen=True)
class TurnCredentials:
    username: str
    credential: str
    expires_at: int  # Unix seconds


def turn_credentials(secret: str, subject: str, ttl_s: int, now: Optional[float] = None) -> TurnCredentials:
    """Credentials for `subject`, valid until `now + ttl_s` (a negative `ttl_s` makes expired ones)."""
    expires_at = int(time.time() if now is None else now) + int(ttl_s)
    username = f"{expires_at}:{subject}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return TurnCredentials(username, base64.b64encode(digest).decode("ascii"), expires_at)


@dataclass(frozen=True)
class _Server:  # the shape `rtc_configuration` takes (as config.IceServer)
    urls: object
    username: Optional[str] = None
    credential: Optional[str] = None


def _is_turn(urls) -> bool:
    return any(u.split(":", 1)[0] in ("turn", "turns") for u in ([urls] if isinstance(urls, str) else urls))


def with_credentials(servers: Iterable, secret: Optional[str], ttl_s: int, subject: str,
                     now: Optional[float] = None) -> list[dict]:
    """`servers` (objects with `urls`, `username`, `credential`, as config.IceServer) as
    browser `RTCIceServer` dicts, TURN entries without static credentials given generated ones.
    One set of credentials is shared by the entries of one call."""
    generated = None
    out = []
    for s in servers:
        entry = {"urls": s.urls}
        if s.username is not None and s.credential is not None:
            entry.update(username=s.username, credential=s.credential)
        elif secret and _is_turn(s.urls):
            generated = generated or turn_credentials(secret, subject, ttl_s, now)
            entry.update(username=generated.username, credential=generated.credential)
        else:  # STUN, or TURN without a secret: as configured
            for key in ("username", "credential"):
                if getattr(s, key) is not None:
                    entry[key] = getattr(s, key)
        out.append(entry)
    return out


def server_configuration(settings, subject: str = SERVER_SUBJECT) -> RTCConfiguration:
    """The server's RTCPeerConnection configuration: `settings.ice_servers`, with TURN
    credentials generated from `settings.TURN_SECRET` (valid `settings.TURN_TTL_S`)."""
    servers = with_credentials(settings.ice_servers, settings.TURN_SECRET, settings.TURN_TTL_S, subject)
    return rtc_configuration(_Server(**s) for s in servers)
