"""Request/reply between workers over Redis pub/sub: what only a source's owner can do (answer
an offer for it, close its session, take its snapshot, start its recording) is asked of that
node through its channel `vg:rpc:<node>`, and the reply comes back on the asker's channel.

A request that reaches no subscriber fails at once (`NodeGone`: the node has died, its lease
and sessions expire within SESSION_TTL_S); one that gets no reply in time raises
`RpcTimeout`. Handlers raise `RemoteError(status, detail, code)` for answers the asker passes on
to its client as they are.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Awaitable, Callable, Optional

from cluster.connection import UNREACHABLE, ClusterDown, guarded

log = logging.getLogger("visionguard.cluster.rpc")

CHANNEL = "vg:rpc:"
RETRY_S = 0.5
RESUBSCRIBE_WAIT_S = 1.5  # how long a node without a listener gets to listen again before it counts as gone


class RemoteError(Exception):
    """An answer for the client, as the node that handled the request gave it."""

    def __init__(self, status: int, detail: str, code: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


class NodeGone(Exception):
    """No worker listens on that node's channel."""


class RpcTimeout(Exception):
    """The node did not answer in time."""


Handler = Callable[[dict], Awaitable[dict]]


class Rpc:
    def __init__(self, client, node_id: str) -> None:
        self.r = client
        self.node_id = node_id
        self.handlers: dict[str, Handler] = {}
        self._pending: dict[str, asyncio.Future] = {}
        self._task: Optional[asyncio.Task] = None
        self._running: set[asyncio.Task] = set()
        self.subscribed = asyncio.Event()  # set while this node's channel is listened to
        self.calls_served = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="vg-cluster-rpc")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=2.0)  # bounded: shutdown never hangs on Redis
            self._task = None
        for task in list(self._running):
            task.cancel()
        for future in self._pending.values():
            future.cancel()

    async def call(self, node: str, method: str, payload: dict, timeout: float, patient: bool = True) -> dict:
        """`method` on `node`; `patient`: give a node with no listener RESUBSCRIBE_WAIT_S to listen again."""
        request_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        message = json.dumps({"id": request_id, "method": method, "payload": payload, "reply_to": self.node_id})
        try:
            # nobody listening: the node is gone, or it is subscribing again after Redis came back
            deadline = asyncio.get_running_loop().time() + (RESUBSCRIBE_WAIT_S if patient else 0.0)
            while True:
                async with guarded():
                    receivers = await self.r.publish(CHANNEL + node, message)
                if receivers:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise NodeGone(node)
                await asyncio.sleep(0.1)
            try:
                reply = await asyncio.wait_for(future, timeout)
            except asyncio.TimeoutError:
                raise RpcTimeout(f"node {node} did not answer {method} within {timeout:g} s") from None
        finally:
            self._pending.pop(request_id, None)
        if "error" in reply:
            err = reply["error"]
            raise RemoteError(err["status"], err["detail"], err["code"])
        return reply["result"]

    # -- the listening side ---------------------------------------------------------------
    async def _listen(self) -> None:
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CHANNEL + self.node_id)
                self.subscribed.set()
                while True:
                    message = await pubsub.get_message(timeout=0.2)
                    if message is not None and message.get("type") == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except UNREACHABLE:  # Redis went away: listen again once it is back
                self.subscribed.clear()
                await asyncio.sleep(RETRY_S)
            except Exception:
                self.subscribed.clear()
                log.exception("cluster rpc listener")
                await asyncio.sleep(RETRY_S)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    pass

    def _dispatch(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if "method" in message:
            task = asyncio.create_task(self._serve(message))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            return
        future = self._pending.get(message.get("id"))
        if future is not None and not future.done():
            future.set_result(message)

    async def _serve(self, message: dict) -> None:
        handler = self.handlers.get(message["method"])
        try:
            if handler is None:
                raise RemoteError(501, f"Node {self.node_id} cannot do {message['method']!r}.", "not_implemented")
            reply = {"id": message["id"], "result": await handler(message.get("payload") or {})}
        except RemoteError as exc:
            reply = {"id": message["id"], "error": {"status": exc.status, "detail": exc.detail, "code": exc.code}}
        except Exception:
            log.exception("cluster rpc %s", message["method"])
            reply = {"id": message["id"], "error": {
                "status": 500, "detail": f"Node {self.node_id} failed to handle {message['method']}.",
                "code": "internal_error"}}
        self.calls_served += 1
        try:
            async with guarded():
                await self.r.publish(CHANNEL + message["reply_to"], json.dumps(reply))
        except ClusterDown:
            log.warning("cluster rpc: the reply to %s could not be sent (Redis down)", message["reply_to"])
