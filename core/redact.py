"""Credentials never leave the process, and client text stays short.

`redact(text)` masks, in this order:
- every secret in the process-wide registry, by exact value (and its percent-encoded, percent-decoded,
  JSON- and repr-escaped forms): `register_secrets` fills it when the app starts (JWT_SECRET,
  TURN_SECRET, SIGNING_KEY, ICE server credentials, the password and credential query values of every
  configured source URL); `clear_secrets` empties it (tests);
- the user info of any URL, up to the *last* `@` before the host (`rtsp://admin:p@ss@cam` →
  `rtsp://***@cam`), whatever it holds (quotes, `%40`, ...);
- the value of every query parameter (or `name=value` word) whose name looks like a credential
  (`password`, `pass`, `pwd`, `token`, `key`, `secret`, `auth`, `signature`, `sig`, `access_token`, `cred`...;
  any case, also as part of a longer name such as `api_key` or `X-Amz-Signature`), and of such keys in
  JSON or Python dict text;
- `Authorization` header values, `Bearer` tokens and anything shaped like a JWT.

`public(text)` is `redact` plus no server paths (the registered folders are cut off the names inside
them, other absolute paths become their last part): for what the API answers.
`clip` cuts the middle out of long text; `RedactingFilter` redacts and clips every log line
(uvicorn's access log included, whose request line carries the query string of signed URLs)."""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Iterable, Optional
from urllib.parse import quote, unquote

MASK = "***"

#: a URL's user info: everything between `scheme://` and the last `@` before the end of the authority
#: (`/`, `?`, `#`, white space, `<` or `>`); quotes count as user info (a password may hold them)
_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s<>]*)@")

#: a parameter name: it looks like a credential when its last part (split at `_`, `-`, `.`) is, or ends
#: with, one of `_CRED_WORDS` (`password`, `api_key`, `accessToken`, `X-Amz-Signature`; not `keyframe`,
#: `AUTH_MODE` or `key_id`)
_NAME = r"[A-Za-z0-9_.\-]+"
_CRED_WORDS = ("pass", "password", "passwd", "passphrase", "pwd", "token", "key", "secret", "auth",
               "authorization", "signature", "sig", "credential", "credentials")
#: `?name=value`, `&name=value`, `;name=value`, or a free-standing `name=value`; the value runs to the next
#: `&`, `#`, white space or a character that never stands unencoded in a URL
_QUERY = re.compile(rf"(?P<pre>(?:^|[?&;\s,(\[{{]))(?P<name>{_NAME})=(?P<value>[^&#\s\"<>]+)")
#: `"password": "…"` / `'token': '…'` (JSON, Python reprs)
_QUOTED = re.compile(rf"(?P<key>(?P<q>[\"'])(?P<name>{_NAME})(?P=q)\s*:\s*)(?P<vq>[\"'])(?P<value>.*?)(?P=vq)")
#: `Authorization: <scheme> <value>` in any of its printed forms (header line, dict, list of byte pairs)
_AUTH_HEADER = re.compile(
    r"(?i)(?P<head>\b(?:proxy-)?authorization\b(?:[\"']?\s*[:=]\s*(?:b?[\"'])?|[\"']\s*,\s*b?[\"'])\s*"
    r"(?:(?:bearer|basic|digest|negotiate|token|hmac-sha256|jwt)\s+)?)(?P<value>[^\s\"',;)}\]]+)")
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)(?P<value>[A-Za-z0-9\-._~+/]{12,}=*)")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*")

#: registered secrets shorter than this are not masked by value (they would mask common text); the
#: structural rules above still mask them in URLs
MIN_SECRET_CHARS = 4

#: the longest log line kept whole: longer lines lose their middle
MAX_LOG_LINE = 400

# -- the registry (process-wide; replaced whole, so that readers need no lock) --------------------------
_lock = threading.Lock()
_secrets: frozenset[str] = frozenset()
_secret_re: Optional[re.Pattern] = None
_server_paths: tuple[str, ...] = ()


def _forms(value: str) -> set[str]:
    """The ways `value` can be printed: as is, percent-decoded, percent-encoded, JSON and repr escaped."""
    forms = {value, unquote(value), quote(value, safe=""), quote(value, safe="!$&'()*+,;=:~"),
             json.dumps(value)[1:-1], repr(value)[1:-1], value.replace("\\", "\\\\").replace("'", "\\'")}
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


def register_secrets(values: Iterable[Optional[str]]) -> None:
    """Mask these values (and their printed forms) wherever `redact` runs, from now on."""
    global _secrets, _secret_re
    values = [values] if isinstance(values, str) else values
    new = {form for value in values if value for form in _forms(str(value))}
    with _lock:
        merged = _secrets | new
        if merged == _secrets:
            return
        ordered = sorted(merged, key=len, reverse=True)  # the longest first: no secret left half-masked
        _secret_re = re.compile("|".join(re.escape(s) for s in ordered))
        _secrets = frozenset(merged)


def register_server_paths(paths: Iterable[Any]) -> None:
    """Folders whose absolute path `public` cuts off the names inside them (e.g. MEDIA_DIR)."""
    global _server_paths
    with _lock:
        new = {str(p).rstrip("/") for p in paths if p and str(p).rstrip("/")}
        _server_paths = tuple(sorted(set(_server_paths) | new, key=len, reverse=True))


def clear_secrets() -> None:
    """Empty the registry (tests)."""
    global _secrets, _secret_re, _server_paths
    with _lock:
        _secrets, _secret_re, _server_paths = frozenset(), None, ()


def registered_secrets() -> frozenset[str]:
    return _secrets


def url_secrets(url: Optional[str]) -> list[str]:
    """The password (user info after the first `:`, up to the last `@` of the authority) and every
    credential-looking query value of `url`, as written: what `register_secrets` should learn."""
    if not url or "://" not in url:
        return []
    rest = url.split("://", 1)[1]
    found = []
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        userinfo = authority.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    if "@" in rest and "@" not in authority:  # a password holding '/', '?' or '#' (written unencoded)
        userinfo = rest.rsplit("@", 1)[0]
        if ":" in userinfo and not re.match(r"\d*(?:[/?#]|$)", userinfo.split(":", 1)[1]):  # not a port
            found.append(userinfo.split(":", 1)[1])
    found += [m.group("value") for m in _QUERY.finditer(rest) if is_credential_name(m.group("name"))]
    return [s for s in found if s]


# -- masking --------------------------------------------------------------------------------------------
def is_credential_name(name: str) -> bool:
    return re.split(r"[_.\-]+", name.lower().strip("_.-"))[-1].endswith(_CRED_WORDS)


def _mask_query(match: re.Match) -> str:
    if not is_credential_name(match.group("name")):
        return match.group(0)
    return f"{match.group('pre')}{match.group('name')}={MASK}"


def _mask_quoted(match: re.Match) -> str:
    if not is_credential_name(match.group("name")):
        return match.group(0)
    return f"{match.group('key')}{match.group('vq')}{MASK}{match.group('vq')}"


def redact(text: str) -> str:
    """`text` without secrets (see the module's doc)."""
    if not text:
        return text
    pattern = _secret_re
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    text = _QUERY.sub(_mask_query, text)
    text = _QUOTED.sub(_mask_quoted, text)
    text = _AUTH_HEADER.sub(rf"\g<head>{MASK}", text)
    text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return _JWT.sub(MASK, text)


_ABSOLUTE_PATH = re.compile(r"(?<![\w\-.~:/@%*])/(?:[^\s/'\"<>]+/)+(?P<name>[^\s/'\"<>]+)")


def hide_paths(text: str) -> str:
    """`text` without server paths: names inside a registered folder relative to it, any other
    absolute path (two parts or more, not a URL's) as its last part."""
    if not text:
        return text
    for folder in _server_paths:
        text = text.replace(folder + "/", "").replace(folder, folder.rsplit("/", 1)[-1] or "/")
    return _ABSOLUTE_PATH.sub(r"\g<name>", text)


def public(value: Any) -> Any:
    """What may go into an API answer: every string (also inside dicts and lists) redacted and
    without server paths."""
    if isinstance(value, str):
        return hide_paths(redact(value))
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [public(v) for v in value]
    return value


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
    """Redacts and clips a record in place (on a handler: every record that handler emits)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.access" and isinstance(record.args, tuple):
            # uvicorn's AccessFormatter reads the args (client, method, path?query, version, status)
            record.msg = redact(str(record.msg))
            record.args = tuple(clip(redact(a), MAX_LOG_LINE) if isinstance(a, str) else a for a in record.args)
        else:
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
        if record.stack_info:
            record.stack_info = clip_lines(redact(record.stack_info))
        return True


def install_log_redaction() -> None:
    """Attach the filter to every handler of the root logger, uvicorn's, and every other logger
    that has handlers of its own."""
    names = {"", "uvicorn", "uvicorn.error", "uvicorn.access"}
    names |= {name for name, logger in list(logging.root.manager.loggerDict.items())
              if isinstance(logger, logging.Logger) and logger.handlers}
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
