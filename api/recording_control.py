"""`RecordingControl`: which recordings run, for whom, and for how long (the routes in
`api.recordings` and the app's lifespan use it).

- A source's recording holds its pipeline like a viewer does (`hub.acquire` … `hub.release`), so
  the source keeps running while it is recorded, with or without viewers.
- A session's recording records that session's own pipeline (its camera in camera mode) and
  ends when the session ends.
- Continuous recording: every source configured with `"record": true` is recorded from start-up
  (trigger `continuous`), segment after segment; an admin's stop pauses it until a start or a
  restart; a recording that failed (disk full) is tried again after `CONTINUOUS_RETRY_S`.
- Event recordings (`RECORD_EVENTS`): while a source's person events are followed, a `PreRoll`
  keeps its last `RECORD_PRE_S` of H.264 packets; a `person_seen` starts a recording (trigger
  `event`) that begins with them, and a `person_gone` ends it `RECORD_POST_S` later, unless the
  next visit begins first (it then goes on in the same recording). Both events carry its id.
- A supervisor task (every `SUPERVISE_S`) ends recordings whose writer failed or whose session
  is gone, and applies retention (`RECORDINGS_MAX_AGE_H`, `RECORDINGS_MAX_BYTES`) every
  `RETENTION_S` and whenever a recording has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional, Sequence

from api.errors import ApiError
from cluster.connection import ClusterDown
from recording import PreRoll, Recorder, RecordingInfo, RecordingStore

if TYPE_CHECKING:
    from api.deps import Services

log = logging.getLogger("visionguard.recordings")

SUPERVISE_S = 0.5
RETENTION_S = 30.0
CONTINUOUS_RETRY_S = 30.0

Key = tuple[str, str]  # ("source", name) | ("session", session id) | ("event", source name)


@dataclass
class Job:
    recorder: Recorder
    pipeline: Any  # model.AIProcessor
    acquired: bool  # holds a hub reference, given back when the recording ends
    session_id: Optional[str] = None


class RecordingControl:
    def __init__(self, services: "Services") -> None:
        self.services = services
        settings = services.settings
        self.store = RecordingStore(settings.RECORDINGS_DIR, settings.node_id if settings.REDIS_URL else None)
        self.segment_s = settings.RECORDING_SEGMENT_S
        self.max_age_s = settings.RECORDINGS_MAX_AGE_H * 3600
        self.max_bytes = settings.RECORDINGS_MAX_BYTES
        self.jobs: dict[Key, Optional[Job]] = {}  # None: being started
        self._starting: dict[Key, asyncio.Event] = {}  # set once that start has succeeded or failed
        self._paused: set[str] = set()  # continuous sources an admin stopped
        self._retry_at: dict[str, float] = {}
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._retention_at = 0.0
        self._seen_changes = -1
        self.record_events = settings.RECORD_EVENTS
        self.pre_s, self.post_s = settings.RECORD_PRE_S, settings.RECORD_POST_S
        self.prerolls: dict[int, PreRoll] = {}  # id(pipeline) → its pre-roll (event recordings)
        self._post: dict[str, asyncio.TimerHandle] = {}  # source → the pending end of its event recording
        if self.record_events:  # from the first pipeline on (always_on ones start before `start`)
            services.hub.watchers.append(self._watch)
            services.events.visit_hook = self.on_visit

    # -- lifespan ---------------------------------------------------------------------
    async def start(self) -> None:
        """Rebuild the list from the sidecars, start continuous recordings and the supervisor."""
        count = await asyncio.to_thread(self.store.load, await self._live_writers())
        log.info("recordings: %d in %s", count, self.store.dir.name)
        await self._ensure_continuous()
        self._task = asyncio.create_task(self._supervise(), name="vg-recordings")

    async def close(self) -> None:
        """Stop every recording (each file closed `done`) and the supervisor."""
        for timer in self._post.values():
            timer.cancel()
        self._post.clear()
        for preroll in self.prerolls.values():
            preroll.stop()
        self.prerolls.clear()
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            # bounded: a cancellation swallowed on the way (a Redis call turning it into a timeout)
            # must not hold the shutdown; the loop also ends by itself on `_closing`
            await asyncio.wait({self._task}, timeout=SUPERVISE_S * 2)
            self._task = None
        for key in list(self.jobs):
            await self._stop(key)

    # -- sources ----------------------------------------------------------------------
    async def start_source(self, name: str) -> RecordingInfo:
        spec = self.services.sources[name]
        self._paused.discard(name)

        async def acquire() -> tuple[Any, bool]:
            services = self.services
            entry, notice = await asyncio.to_thread(services.models.load_or_fallback,
                                                    spec.model or services.settings.DEFAULT_MODEL)
            return services.hub.acquire(spec, entry, notice), True

        return await self._start(("source", name), name, "continuous" if spec.record else "manual",
                                 spec.metric_label, acquire)

    async def stop_source(self, name: str, pause: bool = True) -> Optional[RecordingInfo]:
        """Stop `name`'s recording; `pause`: a continuous one stays stopped until started again."""
        spec = self.services.sources.get(name)
        if pause and spec is not None and spec.record:
            self._paused.add(name)  # until started again or a restart
        return await self._stop(("source", name))

    # -- sessions ---------------------------------------------------------------------
    async def start_session(self, session: Any) -> RecordingInfo:
        """Record what `session` (a webrtc.sessions.Session with a track) sees."""
        pipeline = session.track.pipeline

        async def acquire() -> tuple[Any, bool]:
            return pipeline, False  # the session holds it; the recording ends with the session

        return await self._start(("session", session.id), session.source, "session",
                                 pipeline.capture.spec.metric_label, acquire, owner=session.owner,
                                 session_id=session.id)

    async def stop_session(self, session_id: str) -> Optional[RecordingInfo]:
        return await self._stop(("session", session_id))

    def current(self, key: Key) -> Optional[RecordingInfo]:
        job = self.jobs.get(key)
        return job.recorder.info() if job is not None else None

    # -- events (RECORD_EVENTS) ------------------------------------------------------------
    def _watch(self, pipeline: Any, started: bool) -> None:
        """A hub watcher: a pre-roll for each pipeline the event service would follow."""
        if started and self.services.events.follows(pipeline):
            preroll = self.prerolls[id(pipeline)] = PreRoll(pipeline, self.pre_s)
            preroll.start()
        elif not started and id(pipeline) in self.prerolls:
            self.prerolls.pop(id(pipeline)).stop()

    async def on_visit(self, source: str, type_: str, visit_id: Optional[str], pipeline: Any) -> Optional[str]:
        """The event service's visit hook: the id of the recording this event belongs to."""
        key = ("event", source)
        job = self.jobs.get(key)
        if type_ == "person_seen":
            timer = self._post.pop(source, None)
            if timer is not None:
                timer.cancel()  # a new visit within the post-roll: the same recording goes on
            if job is not None and not job.recorder.ended.is_set() and job.pipeline is pipeline:
                return job.recorder.info().recording_id
            if job is not None:  # it ended on its own, or its pipeline stopped and another began
                await self._stop(key)
            if key in self.jobs:  # being started: not this time
                return None
            preroll = self.prerolls.get(id(pipeline))

            async def acquire() -> tuple[Any, bool]:
                return pipeline, False  # the pipeline runs for its viewers; the recording ends with it

            info = await self._start(key, source, "event", pipeline.capture.spec.metric_label, acquire,
                                     preroll=preroll.frames() if preroll is not None else ())
            return info.recording_id
        if job is None:
            return None
        if source not in self._post:
            loop = asyncio.get_running_loop()
            self._post[source] = loop.call_later(self.post_s, self._end_event, source)
        return job.recorder.info().recording_id

    def _end_event(self, source: str) -> None:
        self._post.pop(source, None)
        asyncio.ensure_future(self._stop(("event", source)))

    # -- recordings -------------------------------------------------------------------
    async def delete(self, recording_id: str) -> bool:
        """False if unknown; ValueError while it is being recorded."""
        return await asyncio.to_thread(self.store.delete, recording_id)

    # -- inside -----------------------------------------------------------------------
    async def _start(self, key: Key, source: str, trigger: str, label: str,
                     acquire: Callable[[], Awaitable[tuple[Any, bool]]], owner: Optional[str] = None,
                     session_id: Optional[str] = None, preroll: Sequence[Any] = ()) -> RecordingInfo:
        if key in self.jobs:
            raise ApiError(409, f"{key[0].capitalize()} {key[1][:64]} is already being recorded.", "already_recording")
        self.jobs[key] = None  # taken while the pipeline starts
        started = self._starting[key] = asyncio.Event()
        pipeline, acquired = None, False
        try:
            pipeline, acquired = await acquire()
            metrics = self.services.metrics
            recorder = Recorder(pipeline, self.store, source, trigger, self.segment_s, owner=owner,
                                model=pipeline.model, bytes_counter=metrics.recording_bytes.labels(label),
                                dropped_counter=metrics.recording_dropped.labels(label), preroll=preroll)
            info = await asyncio.to_thread(recorder.start)
            self.jobs[key] = Job(recorder, pipeline, acquired, session_id)
        except BaseException as exc:
            self.jobs.pop(key, None)
            if acquired:
                await self.services.hub.release(pipeline)
            if isinstance(exc, OSError):
                raise ApiError(503, f"Cannot write to RECORDINGS_DIR: {exc.strerror or exc}.",
                               "recordings_unavailable") from None
            raise
        finally:
            del self._starting[key]
            started.set()
        log.info("recording %s started (%s, %s)", info.recording_id, source, trigger)
        return info

    async def _stop(self, key: Key) -> Optional[RecordingInfo]:
        if key in self._starting:  # a stop that overtakes its start waits for it, then stops it
            await self._starting[key].wait()
        job = self.jobs.get(key)
        if job is None:
            return None
        del self.jobs[key]
        try:
            info = await asyncio.to_thread(job.recorder.finish)
        finally:
            if job.acquired:
                await self.services.hub.release(job.pipeline)
        log.info("recording %s ended: %s, %.1f s, %d bytes%s", info.recording_id, info.state, info.duration_s,
                 info.bytes, f" ({info.error})" if info.error else "")
        return info

    async def _supervise(self) -> None:
        while not self._closing:
            await asyncio.sleep(SUPERVISE_S)
            try:
                await self._check()
            except Exception:  # the supervisor never dies of one bad round
                log.exception("recordings: supervision failed")

    async def _live_writers(self) -> Optional[set]:
        """The live workers of the cluster (None: not known now, Redis is down)."""
        try:
            return set(await self.services.cluster.registry.nodes())
        except ClusterDown:
            return None

    async def _check(self) -> None:
        sessions = self.services.sessions
        if self.store.node_id is not None:  # a cluster sharing the folder: others' recordings
            await asyncio.to_thread(self.store.refresh_foreign, await self._live_writers())
        for key, job in list(self.jobs.items()):
            if job is None:
                continue
            if job.recorder.ended.is_set():  # the writer failed on its own
                await self._stop(key)
                if key[0] == "source":
                    self._retry_at[key[1]] = time.monotonic() + CONTINUOUS_RETRY_S
            elif job.session_id is not None:
                session = sessions.get(job.session_id)
                if session is None or session.track is None or session.track.pipeline is not job.pipeline:
                    await self._stop(key)
        await self._ensure_continuous()
        now = time.monotonic()
        if self.store.changes != self._seen_changes or now >= self._retention_at:
            self._seen_changes = self.store.changes
            self._retention_at = now + RETENTION_S
            await asyncio.to_thread(self.apply_retention)

    async def _ensure_continuous(self) -> None:
        now = time.monotonic()
        for name, spec in self.services.sources.items():
            if (not spec.record or name in self._paused or ("source", name) in self.jobs
                    or now < self._retry_at.get(name, 0.0) or not self.services.cluster.registry.owns(name)):
                continue  # (in a cluster, the node running the source records it)
            try:
                await self.start_source(name)
            except Exception as exc:
                self._retry_at[name] = now + CONTINUOUS_RETRY_S
                log.error("recordings: cannot record source %s (%s); retrying in %.0f s", name, exc,
                          CONTINUOUS_RETRY_S)

    def apply_retention(self) -> list[str]:
        """Delete what retention says (blocking). Returns the ids deleted."""
        deleted = []
        for recording_id in self.store.expired(self.max_age_s, self.max_bytes):
            try:
                if self.store.delete(recording_id):
                    deleted.append(recording_id)
            except ValueError:  # started again meanwhile: never deleted while recording
                continue
        if deleted:
            log.info("recordings: retention deleted %d (%s)", len(deleted), ", ".join(deleted))
        return deleted
