"""onnxruntime sessions sized for a small box (ORT_THREADS, default 1): inference gets one
core, the rest of the pipeline (capture, encode, event loop) the other. See doc/PERFORMANCE.md."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def inference_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # no busy-waiting threads burning the second core between frames
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
