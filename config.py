"""All settings, read from environment variables and `.env` (pydantic-settings).

Lists and maps are JSON in environment variables, e.g.
`STUN_SERVERS='[]'` or `ICE_HOST_ADDRESSES='["127.0.0.1"]'`.
A wrong value stops start-up with one line naming the setting (see `load_settings`).
"""

from __future__ import annotations

import errno
import os
import ipaddress
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from core.redact import redact, url_secrets

APP_NAME = "VisionGuard"
APP_VERSION = "1.0.0"


class IceServer(BaseModel):
    """One STUN or TURN server, in the browser's `RTCIceServer` shape."""

    urls: Union[str, list[str]]
    username: Optional[str] = None
    credential: Optional[str] = None

    @field_validator("urls")
    @classmethod
    def _check_scheme(cls, v: Union[str, list[str]]) -> Union[str, list[str]]:
        for url in [v] if isinstance(v, str) else v:
            if not url.split(":", 1)[0] in ("stun", "stuns", "turn", "turns"):
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return v


class SourceConfig(BaseModel):
    """One entry of SOURCES in its long form (the short form is just the URL string)."""

    url: str = Field(description='A file in MEDIA_DIR, "rtsp://…", "device:N" or "synthetic"')
    model: Optional[str] = None
    fps: Optional[float] = Field(None, gt=0, le=120)
    always_on: bool = False
    record: bool = False  # recorded whenever it runs (implies always_on)


SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class InvalidSettings(SystemExit):
    """Raised (as a clean exit) when a setting has a wrong value."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    # Server
    SERVER_HOST: str = "0.0.0.0"
    SERVER_PORT: int = Field(8000, ge=1, le=65535)
    DEBUG_MODE: bool = False
    # how long a stop (Ctrl-C, SIGTERM) waits for open responses (a download a paused <video> holds)
    SHUTDOWN_GRACE_S: float = Field(10.0, gt=0, le=3600)
    SSL_CERTFILE: Optional[Path] = None
    SSL_KEYFILE: Optional[Path] = None

    # Video
    VIDEO_FILE_PATH: Optional[str] = None
    MEDIA_DIR: Path = Path("./media")
    SOURCES: dict[str, Union[str, SourceConfig]] = {}
    RTSP_OPEN_TIMEOUT_S: float = Field(5.0, gt=0)
    RTSP_STALL_TIMEOUT_S: float = Field(5.0, gt=0)
    RTSP_RECONNECT_MAX_S: float = Field(30.0, ge=0.5)
    TARGET_FPS: int = Field(30, ge=1, le=120)
    DEFAULT_WIDTH: int = Field(640, ge=16, le=3840)
    DEFAULT_HEIGHT: int = Field(480, ge=16, le=2160)
    SNAPSHOT_LINGER_S: float = Field(30.0, ge=0, le=3600)  # an idle source's pipeline runs this long after a snapshot

    # Models
    DEFAULT_MODEL: str = "person"
    MODEL_PATH: Optional[Path] = None
    MODEL_LABELS: Optional[Path] = None
    DETECTION_THRESHOLD: float = Field(0.5, ge=0.0, le=1.0)
    # Thread pools, sized for a 2-core box: inference gets one core, everything else the other
    ORT_THREADS: int = Field(1, ge=1, le=64)
    CV2_THREADS: int = Field(1, ge=0, le=64)

    # Encoding
    ENCODE_MODE: Literal["shared", "per_viewer"] = "shared"
    VIDEO_BITRATE: int = Field(1_000_000, ge=50_000, le=20_000_000)
    KEYFRAME_INTERVAL: float = Field(2.0, gt=0, le=60)

    # WebRTC
    STUN_SERVERS: list[Union[str, IceServer]] = [IceServer(urls="stun:stun.l.google.com:19302")]
    TURN_SERVERS: list[IceServer] = []
    ICE_HOST_ADDRESSES: list[str] = []

    # HTTP and sessions
    CORS_ORIGINS: list[str] = ["*"]
    MAX_SESSIONS: int = Field(100, ge=1)
    # a new offer gets 503 `saturated` while the event loop's median lag over the last 5 s is above
    # this: the sending loop is late most of the time, a new viewer would get a few fps (0: never)
    SATURATION_LAG_S: float = Field(0.1, ge=0)
    CONNECT_TIMEOUT: float = Field(20.0, gt=0)
    PEER_INACTIVITY_TIMEOUT: float = Field(10.0, gt=0)
    MAX_BODY_BYTES: int = Field(65536, ge=1024)
    HEADER_TIMEOUT_S: float = Field(10.0, gt=0, le=300)  # a connection without a complete request head by then is closed
    MAX_CONNECTIONS_PER_IP: int = Field(64, ge=1)

    # Access control (doc/SECURITY.md)
    AUTH_MODE: Literal["off", "jwt"] = "off"
    JWT_ALGORITHMS: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
                                 "ES512", "PS256", "PS384", "PS512", "EdDSA"]] = ["HS256"]
    JWT_SECRET: Optional[str] = None
    JWT_PUBLIC_KEY_FILE: Optional[Path] = None
    JWT_JWKS_FILE: Optional[Path] = None
    JWT_ISSUER: Optional[str] = None
    JWT_AUDIENCE: Optional[str] = None
    JWT_LEEWAY_S: float = Field(10.0, ge=0, le=600)
    MAX_SESSIONS_PER_SUBJECT: int = Field(10, ge=1)
    SIGNING_KEY: Optional[str] = None  # signed media URLs; generated at start when unset
    SIGNED_URL_TTL_S: int = Field(300, ge=10, le=86400)
    TURN_SECRET: Optional[str] = None  # coturn's static-auth-secret: time-limited TURN credentials
    TURN_TTL_S: int = Field(3600, ge=60, le=7 * 86400)

    # Events (doc/API_DOCUMENTATION.md "Events")
    EVENT_HOLD_S: float = Field(5.0, gt=0, le=3600)  # this long without a person ends a visit
    # newest events kept (memory and on reload); at most what the rotated file (2 x 10 MB) surely holds
    EVENTS_MAX: int = Field(1000, ge=1, le=20_000)
    EVENTS_FILE: Optional[Path] = Path("./events.jsonl")  # JSON lines, rotated at 10 MB; empty = not kept
    SSE_CLIENT_BUFFER: int = Field(100, ge=1, le=100_000)  # undelivered events per SSE client before it is cut
    SSE_KEEPALIVE_S: float = Field(15.0, gt=0, le=300)

    # Recording (doc/API_DOCUMENTATION.md "Recordings")
    RECORDINGS_DIR: Path = Path("./recordings")
    RECORDING_SEGMENT_S: float = Field(600.0, ge=5, le=86400)  # a continuous recording rolls over after this long
    RECORDINGS_MAX_AGE_H: float = Field(168.0, gt=0)
    RECORDINGS_MAX_BYTES: int = Field(10_000_000_000, ge=1)
    RECORD_EVENTS: bool = False  # record each person_seen … person_gone span
    RECORD_PRE_S: float = Field(5.0, ge=0, le=60)
    RECORD_POST_S: float = Field(5.0, ge=0, le=600)

    # Cluster (doc/CLUSTER.md): unset REDIS_URL = one process, everything in its memory
    REDIS_URL: Optional[str] = None  # e.g. redis://127.0.0.1:6379/0 (password in the URL is a secret)
    NODE_ID: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", min_length=1,
                         max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")  # names this worker in the cluster
    SESSION_TTL_S: float = Field(15.0, ge=2, le=600)  # a dead worker's sessions and leases leave Redis within it
    MAX_SOURCES_PER_WORKER: int = Field(0, ge=0)  # a worker at this many leases takes no more (0: no limit)
    WORKERS: int = Field(1, ge=1, le=64)  # `python main.py` starts this many worker processes (needs REDIS_URL)
    # where other nodes send a client for a recording stored on this node (e.g. http://10.0.0.5:8000)
    NODE_URL: Optional[str] = None

    # What a client may make the server decode (camera mode), checked on encoded frames
    CAMERA_MAX_WIDTH: int = Field(1920, ge=16, le=16384)
    CAMERA_MAX_HEIGHT: int = Field(1080, ge=16, le=16384)
    CAMERA_MAX_FPS: float = Field(60.0, gt=0, le=240)

    @field_validator("REDIS_URL", "NODE_URL", mode="before")
    @classmethod
    def _empty_url_is_none(cls, v: Any) -> Any:
        return None if v == "" else v

    @model_validator(mode="after")
    def _workers_need_redis(self) -> "Settings":
        if self.WORKERS > 1 and not self.REDIS_URL:
            raise ValueError("WORKERS above 1 needs REDIS_URL (workers share sessions and sources through Redis)")
        if self.REDIS_URL and not self.REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if self.REDIS_URL and self.AUTH_MODE == "jwt" and not self.SIGNING_KEY:
            raise ValueError("SIGNING_KEY must be set with REDIS_URL and AUTH_MODE=jwt (a generated key differs "
                             "per worker, and a URL signed by one must verify on the others)")
        return self

    @field_validator("EVENTS_FILE", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("STUN_SERVERS", mode="after")
    @classmethod
    def _stun_objects(cls, v: list[Union[str, IceServer]]) -> list[Union[str, IceServer]]:
        return [IceServer(urls=s) if isinstance(s, str) else s for s in v]

    @field_validator("SOURCES", mode="after")
    @classmethod
    def _sources(cls, v: dict[str, Union[str, SourceConfig]]) -> dict[str, SourceConfig]:
        out = {}
        for name, spec in v.items():
            if not SOURCE_NAME.match(name):
                raise ValueError(f"source name {name!r} must be 1-64 letters, digits, '_', '-' or '.'")
            if name == "default":
                raise ValueError("the name 'default' belongs to VIDEO_FILE_PATH")
            out[name] = SourceConfig(url=spec) if isinstance(spec, str) else spec
            if not out[name].url.strip():
                raise ValueError(f"source {name!r} has an empty url")
        return out

    @field_validator("ICE_HOST_ADDRESSES")
    @classmethod
    def _ip_addresses(cls, v: list[str]) -> list[str]:
        return [str(ipaddress.ip_address(a)) for a in v]

    @field_validator("DEFAULT_WIDTH", "DEFAULT_HEIGHT")
    @classmethod
    def _even(cls, v: int) -> int:
        # I420 (what video encoders take) needs even dimensions.
        if v % 2:
            raise ValueError("must be an even number")
        return v

    @model_validator(mode="after")
    def _ssl_pair(self) -> "Settings":
        if bool(self.SSL_CERTFILE) != bool(self.SSL_KEYFILE):
            raise ValueError("SSL_CERTFILE and SSL_KEYFILE must be set together")
        return self

    @field_validator("SIGNING_KEY", "TURN_SECRET")
    @classmethod
    def _strong_key(cls, v: Optional[str]) -> Optional[str]:
        # a short key is guessed offline from one signed URL or one set of TURN credentials
        if v is not None and len(v.encode()) < 32:
            raise ValueError("must be at least 32 bytes long")
        return v

    @model_validator(mode="after")
    def _auth_keys(self) -> "Settings":
        """With AUTH_MODE=jwt every listed algorithm needs a usable key (checked here, once)."""
        if self.AUTH_MODE != "jwt":
            return self
        if not self.JWT_ALGORITHMS:
            raise ValueError("JWT_ALGORITHMS must name at least one algorithm when AUTH_MODE=jwt")
        if any(a.startswith("HS") for a in self.JWT_ALGORITHMS):
            if not self.JWT_SECRET:
                raise ValueError("JWT_SECRET must be set when AUTH_MODE=jwt and JWT_ALGORITHMS lists an HS algorithm")
            needed = max(int(a[2:]) // 8 for a in self.JWT_ALGORITHMS if a.startswith("HS"))  # RFC 7518 §3.2
            if len(self.JWT_SECRET.encode()) < needed:
                raise ValueError(f"JWT_SECRET must be at least {needed} bytes long for "
                                 f"{', '.join(a for a in self.JWT_ALGORITHMS if a.startswith('HS'))}")
        if any(not a.startswith("HS") for a in self.JWT_ALGORITHMS):
            if not (self.JWT_PUBLIC_KEY_FILE or self.JWT_JWKS_FILE):
                raise ValueError("JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE must be set when JWT_ALGORITHMS lists "
                                 "RS/ES/PS/EdDSA algorithms")
            for name in ("JWT_PUBLIC_KEY_FILE", "JWT_JWKS_FILE"):
                path = getattr(self, name)
                if path is not None and not path.is_file():
                    raise ValueError(f"{name} {path.name!r} is not a readable file")
        return self

    @property
    def ice_servers(self) -> list[IceServer]:
        return [s for s in self.STUN_SERVERS if isinstance(s, IceServer)] + list(self.TURN_SERVERS)

    @property
    def node_id(self) -> str:
        """This worker's name: NODE_ID, made unique per process when one NODE_ID starts several workers."""
        if self.WORKERS > 1 and "NODE_ID" in self.model_fields_set:
            return f"{self.NODE_ID}-{os.getpid()}"
        return self.NODE_ID

    @property
    def media_dir(self) -> Path:
        return self.MEDIA_DIR.resolve()

    def secret_values(self) -> list[str]:
        """Every secret set here, for `core.redact.register_secrets`: the JWT, TURN and signing keys,
        ICE server credentials, and each source URL's password and credential query values."""
        values = [self.JWT_SECRET, self.TURN_SECRET, self.SIGNING_KEY, *url_secrets(self.REDIS_URL or "")]
        values += [s.credential for s in self.ice_servers]
        for url in [self.VIDEO_FILE_PATH, *(c.url for c in self.SOURCES.values())]:
            values += url_secrets(url)
        return [v for v in values if v]


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across settings: its message names them
            return f"Invalid setting: {err['msg'].removeprefix('Value error, ')}"
        got = err.get("input")
        # scalars are echoed to help; lists and maps are not (they may hold credentials)
        secret = any(word in str(err["loc"][0]) for word in ("SECRET", "KEY", "PASSWORD", "TOKEN"))
        shown = f" (got {got!r})" if isinstance(got, (str, int, float)) and len(repr(got)) < 80 and not secret else ""
        return redact(f"Invalid setting {err['loc'][0]}: {err['msg']}{shown}")
    # SettingsError: pydantic-settings could not decode a JSON value (the value is not echoed:
    # a list or map may hold credentials; json's own message says where it broke)
    found = _NOT_JSON.search(str(exc))
    if not found:
        return redact(f"Invalid setting: {exc}")
    name = found.group(1)
    where = " in .env" if found.group(2).startswith("DotEnv") else ""
    why = f" ({exc.__cause__})" if isinstance(exc.__cause__, ValueError) else ""
    return redact(f"Invalid setting {name}{where}: not valid JSON{why}; lists and maps are JSON, "
                  f"e.g. {_JSON_EXAMPLES.get(name, _JSON_LIST)}")


_NOT_JSON = re.compile(r'error parsing value for field "(\w+)" from source "(\w+)"')
_JSON_LIST = '["a", "b"]'
_JSON_EXAMPLES = {
    "SOURCES": """'{"lobby": "rtsp://cam1/stream", "door": {"url": "clip.mp4", "always_on": true}}'""",
    "STUN_SERVERS": """'["stun:stun.example.org:3478"]'""",
    "TURN_SERVERS": """'[{"urls": "turn:turn.example.org:3478"}]'""",
    "ICE_HOST_ADDRESSES": """'["192.168.1.10"]'""",
    "CORS_ORIGINS": """'["https://console.example"]'""",
    "JWT_ALGORITHMS": """'["HS256"]'""",
}


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; on a wrong value exit with one readable line."""
    try:
        return Settings(**overrides)
    except (ValidationError, SettingsError) as exc:
        raise InvalidSettings(_one_line(exc)) from None


def check_port(host: str, port: int) -> None:
    """Stop with one line if uvicorn could not listen there (bound the way uvicorn binds: with
    SO_REUSEADDR), rather than after the start-up banner with uvicorn's `[Errno 98]`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidSettings(f"Port {port} on {host} is in use (SERVER_PORT): stop what listens there "
                                      "or choose another port") from None
            raise InvalidSettings(f"Cannot listen on {host} port {port} (SERVER_HOST, SERVER_PORT): "
                                  f"{exc.strerror or exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
