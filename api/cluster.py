"""`ClusterService`: the routes' view of the cluster (doc/CLUSTER.md).

It turns the registry's and the RPC's outcomes into API answers (503 `cluster_unavailable`
while Redis is down or a source's owner has gone, 504 `cluster_timeout` when the owner does
not answer), feeds the registry's keeper with this node's state (its sessions, the sources it
runs and their figures), stops a source whose lease went to another node, and keeps
`always_on` sources running somewhere: a node that can take a free one takes it.

Without REDIS_URL the registry is `MemoryRegistry`: every source is this node's and the
routes never leave the process.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

from api.errors import ApiError
from cluster.connection import UNREACHABLE, ClusterDown, connect
from cluster.redis_registry import AtCapacity, RedisRegistry, Settling
from cluster.registry import MemoryRegistry
from cluster.rpc import CHANNEL, NodeGone, RemoteError, Rpc, RpcTimeout

if TYPE_CHECKING:
    from api.deps import Services

log = logging.getLogger("visionguard.cluster")

RPC_TIMEOUT_S = 10.0  # an offer handed to the owner: ICE gathering on loopback takes well under this


def unavailable(why: str) -> ApiError:
    return ApiError(503, f"The cluster is unavailable: {why}; try again shortly.", "cluster_unavailable",
                    headers={"Retry-After": "2"})


class ClusterService:
    def __init__(self, services: "Services") -> None:
        self.services = services
        settings = services.settings
        self.node_id = settings.node_id
        self.rpc: Optional[Rpc] = None
        if settings.REDIS_URL:
            client = connect(settings.REDIS_URL)
            self.registry: Any = RedisRegistry(client, self.node_id, settings.SESSION_TTL_S, settings.NODE_URL,
                                               settings.MAX_SOURCES_PER_WORKER)
            self.rpc = Rpc(client, self.node_id)
            self.registry.local_sessions = self._local_sessions
            self.registry.running_sources = self._running_sources
            self.registry.on_lost = self._stop_source
        else:
            self.registry = MemoryRegistry(self.node_id)
        #: source → what fills its published state (set by the catalog: the /api/sources entry)
        self.describe: Callable[[str], Optional[dict]] = lambda source: None
        self._always_on: Optional[asyncio.Task] = None
        self._tasks: set[asyncio.Task] = set()  # publishes and forgets in flight (kept referenced)
        if self.shared:
            services.sessions.listeners.append(self._on_session)

    @property
    def shared(self) -> bool:
        return self.registry.shared

    # -- lifespan ---------------------------------------------------------------------
    async def start(self) -> None:
        if not self.shared:
            return
        self.registry.source_state = self.describe
        await self._check_unique()
        await self.rpc.start()
        await self.registry.start()
        self._always_on = asyncio.create_task(self._keep_always_on(), name="vg-cluster-always-on")

    async def stop(self) -> None:
        if not self.shared:
            return
        if self._always_on is not None:
            self._always_on.cancel()
        await self.rpc.stop()
        await self.registry.stop()

    async def _check_unique(self) -> None:
        """Two workers with one NODE_ID would both answer for it: the second one does not start."""
        try:
            (_, listeners), = await self.rpc.r.pubsub_numsub(CHANNEL + self.node_id)
        except UNREACHABLE:
            return  # Redis is down: nothing to compare with (the keeper joins once it is back)
        if listeners:
            raise RuntimeError(f"NODE_ID {self.node_id!r} is already used by a live worker of this cluster; "
                               "give each worker its own NODE_ID (or leave it unset: host name + pid)")

    def health(self) -> Optional[dict]:
        """`/health`'s `cluster` part (None without Redis): `workers` counts the live workers of
        the cluster (every node's, as of this node's last heartbeat)."""
        if not self.shared:
            return None
        return {"redis": "ok" if self.registry.up else "down", "node_id": self.node_id,
                "workers": self.registry.live_nodes}

    def info(self) -> Optional[dict]:
        """`/info`'s `cluster` part (None without Redis)."""
        if not self.shared:
            return None
        registry = self.registry
        return {**self.health(), "leases": {s: lease.token for s, lease in sorted(registry.leases.items())},
                "lost_leases": registry.lost_leases, "handoffs_served": self.rpc.calls_served}

    # -- asking the registry and other nodes, as API answers ----------------------------------
    async def admit(self, session_id: str, subject: str) -> None:
        """Take a place for a new session cluster-wide (503 when full or Redis is down)."""
        settings = self.services.settings
        per_subject = settings.MAX_SESSIONS_PER_SUBJECT if settings.AUTH_MODE == "jwt" else None
        try:
            refused = await self.registry.admit(session_id, subject, settings.MAX_SESSIONS, per_subject)
        except ClusterDown:
            raise unavailable("Redis cannot be reached") from None
        if refused == "server_full":
            raise ApiError(503, "The server is full; try again later.", "server_full", headers={"Retry-After": "5"})
        if refused == "subject_limit":
            raise ApiError(503, f"You already hold {per_subject} sessions (MAX_SESSIONS_PER_SUBJECT); "
                           "close one or try again later.", "subject_limit", headers={"Retry-After": "5"})

    async def forget(self, session_id: str, subject: str) -> None:
        await self.registry.forget(session_id, subject)

    async def owner_for(self, source: str, hops: int = 0) -> Optional[str]:
        """None when this node runs `source` (it holds the lease now), else the node to ask."""
        try:
            return await self.registry.claim(source, hops)
        except ClusterDown:
            raise unavailable("Redis cannot be reached") from None
        except Settling:
            raise unavailable("Redis restarted a moment ago and the workers are re-asserting their sources") from None
        except AtCapacity:
            raise ApiError(503, "Every worker already runs MAX_SOURCES_PER_WORKER sources; try again later.",
                           "server_full", headers={"Retry-After": "5"}) from None

    @asynccontextmanager
    async def holding(self, session_id: str, subject: str):
        """Keep an admitted place while the offer is with another node (it may take longer than
        SESSION_TTL_S: a place nobody refreshes would be given to someone else meanwhile)."""
        async def keep() -> None:
            while True:
                await asyncio.sleep(self.registry.interval)
                try:
                    await self.registry.hold(session_id, subject)
                except ClusterDown:
                    pass

        task = asyncio.create_task(keep())
        try:
            yield
        finally:
            task.cancel()

    async def session_elsewhere(self, session_id: str, caller) -> dict:
        """Another node's session as the registry describes it (404 for an unknown one, or another
        subject's without `admin`: no existence leak)."""
        try:
            meta = await self.registry.session(session_id)
        except ClusterDown:
            raise unavailable("Redis cannot be reached") from None
        if meta is None or not (caller.can("admin") or meta["subject"] == caller.subject):
            raise ApiError(404, f"Session {session_id[:64]} not found.", "not_found")
        return meta

    async def current_owner(self, source: str) -> Optional[str]:
        """The node running `source` now (this one included), or None when nobody does."""
        try:
            return await self.registry.owner(source)
        except ClusterDown:
            raise unavailable("Redis cannot be reached") from None

    async def ask(self, node: str, method: str, payload: dict, timeout: float = RPC_TIMEOUT_S) -> dict:
        try:
            return await self.rpc.call(node, method, payload, timeout)
        except RemoteError as exc:
            raise ApiError(exc.status, exc.detail, exc.code) from None
        except NodeGone:
            raise unavailable(f"node {node} is not answering (its sources move within SESSION_TTL_S)") from None
        except RpcTimeout as exc:
            raise ApiError(504, f"The cluster did not answer in time: {exc}.", "cluster_timeout") from None
        except ClusterDown:
            raise unavailable("Redis cannot be reached") from None

    async def ask_all(self, method: str, payload: dict, timeout: float = RPC_TIMEOUT_S) -> list[dict]:
        """Every other live node's answer (nodes that fail to answer are left out)."""
        try:
            nodes = [n for n in await self.registry.nodes() if n != self.node_id]
        except ClusterDown:
            return []
        # a node that has just died is still listed for a while: no waiting for it to listen again
        results = await asyncio.gather(*(self.rpc.call(n, method, payload, timeout, patient=False) for n in nodes),
                                       return_exceptions=True)
        return [r for r in results if isinstance(r, dict)]

    def serve(self, method: str, handler: Callable[[dict], Awaitable[dict]]) -> None:
        """Answer `method` for other nodes; an ApiError raised goes back as it is."""
        if self.rpc is None:
            return

        async def handle(payload: dict) -> dict:
            try:
                return await handler(payload)
            except ApiError as exc:
                raise RemoteError(exc.status_code, exc.detail, exc.code) from None

        self.rpc.handlers[method] = handle

    # -- what the keeper publishes ---------------------------------------------------------
    def _local_sessions(self) -> list[dict]:
        return [session_meta(s) for s in list(self.services.sessions.sessions.values())]

    def _running_sources(self) -> set[str]:
        captures, _ = self.services.hub.running()
        return {c.spec.name for c in captures if c.spec.kind != "camera"}  # a viewer's own camera has no lease

    def _on_session(self, what: str, session) -> None:
        """A session's state changed or it closed: the registry hears of it now, not at the next tick."""
        job = self.publish_session(session) if what == "changed" else self.forget(session.id, session.owner)
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish_session(self, session) -> None:
        if self.shared and session.id in self.services.sessions.sessions:  # (not once it has closed)
            try:
                await self.registry.publish([session_meta(session)])
            except ClusterDown:
                pass  # the keeper publishes it once Redis is back

    async def _stop_source(self, source: str) -> None:
        """Another node holds this source's lease now: nothing of it may run here any more."""
        services = self.services
        for session in list(services.sessions.sessions.values()):
            if session.source == source and session.mode == "view":
                await services.sessions.close(session.id, reason="lease-lost")
        if services.recordings is not None:
            await services.recordings.stop_source(source, pause=False)
        await services.hub.unhold(source)

    # -- always_on sources: held by one node of the cluster --------------------------------
    async def _keep_always_on(self) -> None:
        while True:
            await asyncio.sleep(self.registry.interval)
            try:
                await self.claim_always_on()
            except Exception:
                log.exception("cluster: always_on sources")

    async def claim_always_on(self) -> list[str]:
        """Take every `always_on` source nobody runs (this node, when it may), and hold it here."""
        taken = []
        for spec in self.services.sources.values():
            if not spec.always_on or self.services.hub.held(spec.name):
                continue
            try:
                if await self.registry.claim(spec.name, hops=1) is not None:
                    continue  # another node runs it
            except (ClusterDown, Settling, AtCapacity):
                return taken  # tried again next round
            services = self.services
            entry, notice = await asyncio.to_thread(services.models.load_or_fallback,
                                                    spec.model or services.settings.DEFAULT_MODEL)
            services.hub.hold(spec, entry, notice)
            taken.append(spec.name)
        return taken


def session_meta(session) -> dict:
    pc = session.pc
    return {"session_id": session.id, "subject": session.owner, "source": session.source, "model": session.model,
            "mode": session.mode, "created_at": session.created_at.isoformat(),
            "connection_state": pc.connectionState, "ice_connection_state": pc.iceConnectionState,
            "ice_gathering_state": pc.iceGatheringState, "signaling_state": pc.signalingState}
