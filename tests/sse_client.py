"""A small Server-Sent Events client for tests (httpx streaming): collects every event with
its arrival time, and the comments (keep-alives)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Callable, Optional

import httpx


class SseClient:
    def __init__(self, base_url: str, path: str, headers: Optional[dict] = None) -> None:
        self.base_url, self.path, self.headers = base_url, path, headers or {}
        self.events: list[dict] = []  # {"id", "event", "data", "at"}
        self.comments: list[str] = []
        self.status: Optional[int] = None
        self.response_headers: Optional[httpx.Headers] = None
        self.ended = False
        self._changed = asyncio.Event()

    async def __aenter__(self) -> "SseClient":
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(30, read=None))
        self._cm = self.http.stream("GET", self.path, headers=self.headers)
        response = await self._cm.__aenter__()
        self.status, self.response_headers = response.status_code, response.headers
        self._task = asyncio.create_task(self._read(response))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._cm.__aexit__(None, None, None)
        await self.http.aclose()

    async def _read(self, response: httpx.Response) -> None:
        fields: dict = {}
        try:
            async for line in response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        self.events.append({"id": int(fields["id"]) if "id" in fields else None,
                                            "event": fields.get("event"), "data": json.loads(fields["data"]),
                                            "at": time.monotonic()})
                        self._changed.set()
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line)
                    self._changed.set()
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError:
            pass
        finally:
            self.ended = True
            self._changed.set()

    async def wait_for(self, predicate: Callable[[list[dict]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self.events):
            if self.ended or time.monotonic() >= deadline:
                return predicate(self.events)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), max(0.01, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        return True

    def of(self, source: str, type_: Optional[str] = None) -> list[dict]:
        return [e for e in self.events if e["data"]["source"] == source and (type_ is None or e["event"] == type_)]
