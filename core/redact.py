"""Credentials never leave the process: the userinfo of any URL in a text becomes `***`.
Client text stays short: `clip` cuts the middle out of long text, and every log line is clipped.

Used for everything the API shows and, through `RedactingFilter`, for every log line (FFmpeg's
error strings contain the URL they failed on; tracebacks contain what a client sent)."""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")

#: the longest log line kept whole: longer lines lose their middle
MAX_LOG_LINE = 400


def redact(text: str) -> str:
    return _USERINFO.sub(r"\g<scheme>***@", text) if text else text


def clip(text: str, limit: int = 200) -> str:
    """`text` safe to show or log: at most about `limit` characters (the middle cut out, the
    number cut said), and lone surrogates (a JSON `\\ud800` escape) written as escapes, so that
    it always encodes as UTF-8."""
    text = text if isinstance(text, str) else str(text)
    if len(text) > limit:
        head, tail = (limit * 2) // 3, limit // 4
        text = f"{text[:head]}…[{len(text) - head - tail} characters cut]…{text[len(text) - tail:]}"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip_lines(text: str, limit: int = MAX_LOG_LINE) -> str:
    """Every line of `text` clipped to `limit` characters."""
    if len(text) <= limit and "\n" not in text:
        return clip(text, limit)
    return "\n".join(clip(line, limit) for line in text.split("\n"))


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = clip_lines(redact(message))
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # the traceback text is rendered later from the exception: render it now, redacted
            record.exc_text = clip_lines(redact(logging.Formatter().formatException(record.exc_info)))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = clip_lines(redact(record.exc_text))
        return True


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root logger (and uvicorn's)."""
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
