"""One redis-py asyncio client per worker, with short timeouts: a Redis that is down must turn
into a quick `ClusterDown` (503 `cluster_unavailable`), never a request that hangs."""

from __future__ import annotations

from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: what redis-py raises when the server cannot be reached or does not answer in time
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

COMMAND_TIMEOUT_S = 1.0  # Redis answers in well under a millisecond; a hung one fails a request fast
CONNECT_TIMEOUT_S = 1.0


class ClusterDown(Exception):
    """Redis cannot be reached: nothing cluster-wide can be decided now."""


def connect(url: str) -> aioredis.Redis:
    """A client for `url` (connections are made on first use, and made again after Redis returns)."""
    # one retry on a fresh connection: after Redis restarts, every pooled connection is broken and
    # the first command on each would fail although Redis is back
    return aioredis.Redis.from_url(
        url, decode_responses=True, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=10, retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        retry_on_error=[RedisConnectionError])  # never on a timeout: a hung Redis fails after one


@asynccontextmanager
async def guarded():
    """Turn redis-py's connection and timeout errors into `ClusterDown`."""
    try:
        yield
    except UNREACHABLE as exc:
        raise ClusterDown(f"Redis is unreachable ({type(exc).__name__})") from None
