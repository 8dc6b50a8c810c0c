"""Credentials never leave the process: the userinfo of any URL in a text becomes `***`.

Used for everything the API shows and, through `RedactingFilter`, for every log line (FFmpeg's
error strings contain the URL they failed on)."""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def redact(text: str) -> str:
    return _USERINFO.sub(r"\g<scheme>***@", text) if text else text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback text is rendered later from the exception: render it now, redacted
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root logger (and uvicorn's)."""
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
