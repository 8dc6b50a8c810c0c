"""The cluster: what several workers (processes, machines) share through Redis (doc/CLUSTER.md).

`REDIS_URL` unset: `MemoryRegistry`, this process alone (nothing leaves it). Set: `RedisRegistry`
(sessions, admission, source leases, nodes), `Rpc` (hand-offs to the worker that owns a source)
and the event stream."""

from cluster.connection import ClusterDown, connect

__all__ = ["ClusterDown", "connect"]
