"""The registry: what the workers of a cluster know about each other.

It holds session metadata (id, owner node, subject, source, model, mode, WebRTC states,
created, last seen), source leases (which node runs a source's pipeline), the cluster's
admission (MAX_SESSIONS, MAX_SESSIONS_PER_SUBJECT) and the live nodes.

`MemoryRegistry` (REDIS_URL unset) is one process alone: every source is this process's,
admission is left to the local `SessionManager` (exactly what it did before clusters), and
there are no other nodes' sessions to list. `cluster.redis_registry.RedisRegistry` shares all
of it through Redis. The routes ask the local state first and the registry for the rest, so
the in-memory case runs the same code paths as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class Lease:
    """A source's lease as this node holds it: `token` grows with every grant (fencing)."""

    source: str
    token: int
    taken: float  # monotonic time of the grant
    renewed: float = 0.0


@dataclass
class NodeInfo:
    node_id: str
    url: Optional[str] = None  # NODE_URL: where recordings stored on it can be fetched
    sources: int = 0  # leases it holds (placement picks the least loaded)
    extra: dict = field(default_factory=dict)


class MemoryRegistry:
    """One process, nothing shared (REDIS_URL unset)."""

    shared = False

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.up = True  # Redis reachable (always, without Redis)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    # -- admission: the local SessionManager decides ------------------------------------
    async def admit(self, session_id: str, subject: str, max_total: int, max_per_subject: Optional[int]
                    ) -> Optional[str]:
        return None

    async def forget(self, session_id: str, subject: str) -> None:
        pass

    # -- sessions: only local ones exist --------------------------------------------------
    async def publish(self, metas: list[dict]) -> None:
        pass

    async def sessions(self) -> list[dict]:
        return []

    async def session(self, session_id: str) -> Optional[dict]:
        return None

    # -- sources: all of them are this process's -------------------------------------------
    async def claim(self, source: str, hops: int = 0) -> Optional[str]:
        """None when this node runs `source` (its lease is held now), else the owner's node id."""
        return None

    async def owner(self, source: str) -> Optional[str]:
        return None

    def owns(self, source: str) -> bool:
        return True

    async def source_states(self) -> dict[str, dict]:
        """Other nodes' published state of the sources they own, by source name."""
        return {}

    async def nodes(self) -> dict[str, NodeInfo]:
        return {self.node_id: NodeInfo(self.node_id)}
