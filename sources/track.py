"""The viewer's own camera (camera mode): frames from an aiortc remote track.

aiortc's decoder thread puts every decoded frame into the track's unbounded asyncio queue. The
pump task here takes them on the event loop, drains the queue down to the newest frame, and
puts that in a latest-value slot; the capture thread converts it (off the loop). A slow model
therefore never makes frames pile up anywhere."""

from __future__ import annotations

import asyncio
from typing import Optional

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from compat.aiortc import receive_queue
from core.slots import LatestSlot
from sources.base import SourceError


class TrackSource:
    kind = "camera"
    paced = False

    def __init__(self, track: MediaStreamTrack, fps: float = 30.0) -> None:
        self.track = track
        self.fps = fps
        self.slot: LatestSlot = LatestSlot()
        self.received = 0
        self.dropped = 0  # stale frames drained from aiortc's queue unseen
        self._seen = 0
        self._ended = False
        self._task: Optional[asyncio.Task] = None

    # -- event loop side --------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                frame = await self.track.recv()
                queue = receive_queue(self.track)
                while not queue.empty():
                    newer = queue.get_nowait()
                    if newer is None:  # end of track
                        raise MediaStreamError
                    self.dropped += 1
                    frame = newer
                self.received += 1
                self.slot.put(frame)
        except MediaStreamError:
            pass
        finally:
            self._ended = True
            self._task = None  # a finished task keeps its exception's frames: no cycle through it
            self.slot.wake()

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    # -- capture thread side ----------------------------------------------
    def open(self) -> None:
        if self._ended:
            raise SourceError("the viewer's camera track has ended")

    def read(self) -> Optional[np.ndarray]:
        seq, frame = self.slot.wait_newer(self._seen, timeout=0.25)
        if seq == self._seen:
            if self._ended:
                raise SourceError("the viewer's camera track has ended")
            return None
        self._seen = seq
        return frame.to_ndarray(format="bgr24")

    def close(self) -> None:
        pass
