"""Recordings: the processed video of a pipeline, written to fragmented H.264 MP4 files
(`Recorder`, `Mp4File`; `PreRoll` for what came just before an event) and kept with a JSON sidecar each (`RecordingStore`).

This package knows pipelines, not the API: starting, stopping, sessions, retention runs and
keeping a pipeline alive for a recording belong to `api.recording_control`."""

from recording.mp4 import Mp4File, probe
from recording.preroll import PreRoll
from recording.recorder import Recorder
from recording.store import RecordingInfo, RecordingStore, valid_id

__all__ = ["Mp4File", "PreRoll", "Recorder", "RecordingInfo", "RecordingStore", "probe", "valid_id"]
