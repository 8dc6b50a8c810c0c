"""`Recorder`: records what one pipeline sends (boxes and overlay drawn) into consecutive
fragmented MP4 segments, from the pipeline's own shared H.264 encoder (encoded once, for the
viewers and the recorder alike).

    clock thread ──tap: put_nowait──► bounded queue (QUEUE_S of frames) ──► writer thread vg-rec-<source>
                                                                             (PyAV mux, sidecars)

- Start: holds a reference on the pipeline's H.264 encoder (`use_codec`), asks it for a keyframe,
  and the writer skips frames until the first keyframe. A pre-roll (frames already encoded,
  oldest first) may be handed in: it is written before the live frames.
- The live path never waits: the tap only does a non-blocking put. When the queue is full, the
  frame and every one after it up to the next keyframe are dropped (counted in `dropped` and in
  `visionguard_recording_dropped_frames_total`) and a keyframe is asked for; the writer sees a
  decodable stream with a gap in time, never a corrupt one.
- Segments: once a segment is `segment_s` long, a keyframe is asked for and the next keyframe
  starts a new file with a new recording id (the closed one is `done`), with no frame lost or
  repeated between them.
- A write error (disk full, file too large, anything) ends the recording: the segment is
  `failed` with the error as a sentence, the partial file is kept, and the pipeline goes on.
- Stop (`finish`): the tap is removed, the writer drains the queue, closes the file (writing the
  last fragment) and the sidecar (`done`), and the encoder reference is given back.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Optional, Sequence

from core.metrics import NOOP
from pipeline.encoders import EncodedFrame
from pipeline.frames import VIDEO_CLOCK_RATE, OutFrame
from recording.mp4 import Mp4File, describe, probe
from recording.store import RecordingInfo, RecordingStore

log = logging.getLogger("visionguard.recordings")

QUEUE_S = 2.0  # how far (in seconds of video) the writer may fall behind before frames are dropped
CODEC = "h264"
FINISH_TIMEOUT_S = 15.0


class Recorder:
    def __init__(self, pipeline: Any, store: RecordingStore, source: str, trigger: str, segment_s: float,
                 owner: Optional[str] = None, model: Optional[str] = None, bytes_counter: Any = NOOP,
                 dropped_counter: Any = NOOP, preroll: Sequence[EncodedFrame] = (), queue_s: float = QUEUE_S) -> None:
        self.pipeline = pipeline  # model.AIProcessor (add_tap, use_codec, request_keyframe, fps, width, height)
        self.store = store
        self.source, self.trigger, self.owner, self.model = source, trigger, owner, model
        self.segment_s = segment_s
        self._bytes_counter, self._dropped_counter = bytes_counter, dropped_counter
        self._queue: queue.Queue[EncodedFrame] = queue.Queue(max(2, int(queue_s * pipeline.fps)) + len(preroll))
        for frame in preroll:
            self._queue.put_nowait(frame)
        self._after_pts: Optional[int] = preroll[-1].pts if preroll else None  # live frames start after it
        # with a pre-roll the recording begins that long before now
        self._preroll_s = (preroll[-1].pts - preroll[0].pts) / VIDEO_CLOCK_RATE if preroll else 0.0
        self._skipping = False  # the queue was full: drop up to the next keyframe
        self._key_asked = False
        self._file: Optional[Mp4File] = None
        self._using_codec = False
        self._stopping = threading.Event()
        self.ended = threading.Event()  # the writer has finished (stopped, or failed)
        self.current: Optional[RecordingInfo] = None  # the segment being written
        self.dropped = 0
        self.error: Optional[str] = None
        self._thread = threading.Thread(target=self._run, name=f"vg-rec-{source}"[:60], daemon=True)

    # -- control (blocking: call off the event loop) -----------------------------------
    def start(self) -> RecordingInfo:
        """Create the first segment's sidecar (raises OSError if it can't be) and start recording."""
        self.current = self.store.create(self.source, self.trigger, self.owner, self.model,
                                         started_at=time.time() - self._preroll_s)
        self.pipeline.use_codec(CODEC)
        self._using_codec = True
        self.pipeline.add_tap(self._tap)
        self.pipeline.request_keyframe(CODEC)  # a new encoder starts on one anyway
        self._thread.start()
        return self.current.copy()

    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> RecordingInfo:
        """Stop: write what is queued, close the file and its sidecar. Returns the last segment."""
        self.pipeline.remove_tap(self._tap)
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("recording %s: the writer did not finish within %.0f s", self.current.recording_id,
                            timeout)
        if self._using_codec:
            self._using_codec = False
            self.pipeline.drop_codec(CODEC)
        return self.current.copy()

    def info(self) -> RecordingInfo:
        return self.current.copy()

    # -- clock thread: never blocks --------------------------------------------------
    def _tap(self, out: OutFrame) -> None:
        frame = out.encoded.get(CODEC)
        if frame is None:  # the encoder is not there yet, or failing
            return
        if self._after_pts is not None:
            if frame.pts <= self._after_pts:
                return  # already in the pre-roll
            if frame.pts - self._after_pts > 1.5 * VIDEO_CLOCK_RATE / self.pipeline.fps and not frame.keyframe:
                self._skipping = True  # a tick went by between the pre-roll and the tap: wait for a keyframe
                self.pipeline.request_keyframe(CODEC)
            self._after_pts = None
        if self._skipping and not frame.keyframe:
            self._drop()
            return
        try:
            self._queue.put_nowait(frame)
            self._skipping = False
        except queue.Full:
            self._skipping = True
            self._drop()
            self.pipeline.request_keyframe(CODEC)  # rate-limited by the encoder

    def _drop(self) -> None:
        self.dropped += 1
        self._dropped_counter.inc()

    # -- writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                try:
                    if self._stopping.is_set():
                        frame = self._queue.get_nowait()
                    else:
                        frame = self._queue.get(timeout=0.1)
                except queue.Empty:
                    if self._stopping.is_set():
                        break
                    continue
                if not self._write(frame):
                    break
        finally:
            self.pipeline.remove_tap(self._tap)  # after a failure: stop queueing at once
            self._end_segment()
            self.ended.set()

    def _write(self, frame: EncodedFrame) -> bool:
        """Write one frame; False once the recording has failed."""
        try:
            if self._file is None:
                if not frame.keyframe:
                    return True  # a recording starts on a keyframe
                self._file = self._open(self.current)
            else:
                elapsed = (frame.pts - self._file.first_pts) / VIDEO_CLOCK_RATE
                if frame.keyframe and elapsed >= self.segment_s:
                    if not self._roll_over():
                        return False
                elif not self._key_asked and elapsed + 1.0 / self.pipeline.fps >= self.segment_s:
                    self._key_asked = True
                    self.pipeline.request_keyframe(CODEC)
            self._file.write(frame.data, frame.pts, frame.keyframe)
            self._update(self.current, self._file)
            return True
        except Exception as exc:  # OSError (ENOSPC, EFBIG, ...), av.FFmpegError: this recording ends
            # the segment is marked failed by _end_segment, once its figures are those of the kept file
            self.error = f"Cannot write the recording: {describe(exc)}"
            log.error("recording %s (%s) failed: %s (%r)", self.current.recording_id, self.source, self.error, exc)
            return False

    def _open(self, info: RecordingInfo) -> Mp4File:
        return Mp4File(self.store.video_path(info.recording_id), self.pipeline.fps, self.pipeline.width,
                       self.pipeline.height, on_bytes=self._bytes_counter.inc)

    def _update(self, info: RecordingInfo, file: Mp4File) -> None:
        info.duration_s, info.frames, info.bytes = round(file.duration_s, 3), file.frames, file.bytes
        info.dropped_frames = self.dropped

    def _roll_over(self) -> bool:
        """Close this segment (`done`) and go on in a new one, from this keyframe; False if the
        segment could not be closed (it is then `failed` and the recording ends)."""
        self._end_segment()
        if self.current.state == "failed":
            self.error = self.current.error
            return False
        self.current = self.store.create(self.source, self.trigger, self.owner, self.model)
        self._file = self._open(self.current)
        self._key_asked = False
        self.dropped = 0
        return True

    def _end_segment(self) -> None:
        info, file, self._file = self.current, self._file, None
        if info is None or info.state != "recording" or info.ended_at is not None:
            return
        error = self.error
        if file is not None:
            closed = file.close()
            if closed and not error:
                error = f"Cannot write the recording: {closed}"
                log.error("recording %s (%s) failed: %s", info.recording_id, self.source, error)
            self._update(info, file)
            if error:  # the last fragment may not have reached the disk: list what plays
                try:
                    duration, frames = probe(self.store.video_path(info.recording_id))
                    info.duration_s, info.frames = round(duration, 3), frames
                except Exception:  # nothing complete was written
                    info.duration_s, info.frames = 0.0, 0
        # the figures first, the state last: a reader on the loop never sees a final state with
        # figures that are about to change
        info.ended_at = time.time()
        if error:
            info.error, info.state = error, "failed"
        elif info.frames:
            info.state = "done"
        else:
            info.error, info.state = "Stopped before the first keyframe: nothing was recorded.", "failed"
        self.store.finished(info)
