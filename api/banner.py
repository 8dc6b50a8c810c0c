"""The start-up banner: what runs, where, and how open it is."""

from __future__ import annotations

import logging

from config import APP_NAME, APP_VERSION, Settings
from core.redact import clip_lines, redact
from sources.spec import display_name

log = logging.getLogger("visionguard")


def print_banner(settings: Settings, spec) -> None:
    """What runs, where, and how open it is: on stdout, through the same redaction as the logs."""
    host = "localhost" if settings.SERVER_HOST in ("0.0.0.0", "::") else settings.SERVER_HOST
    scheme = "https" if settings.SSL_CERTFILE else "http"
    base = f"{scheme}://{host}:{settings.SERVER_PORT}"
    line = "=" * 70
    if spec.kind == "file":
        video = f"✓ Video file found: {spec.display}"
    elif spec.kind == "rtsp":
        video = f"✓ Source: {spec.display} ({spec.url.split('://', 1)[0].upper()})"
    elif spec.kind == "device":
        video = f"✓ Source: {spec.display}"
    elif settings.VIDEO_FILE_PATH and settings.VIDEO_FILE_PATH != "synthetic":
        video = (f"⚠ Video file not found: {display_name(settings.VIDEO_FILE_PATH, settings.media_dir)} "
                 "(streaming the built-in synthetic source)")
    elif settings.VIDEO_FILE_PATH == "synthetic":
        video = "✓ Source: the built-in synthetic source"
    else:
        video = "✓ No VIDEO_FILE_PATH set: streaming the built-in synthetic source"
    jwt_on = settings.AUTH_MODE == "jwt"
    auth = (f"✓ Auth: JWT ({', '.join(settings.JWT_ALGORITHMS)})" if jwt_on
            else "⚠ Auth: off — anyone who reaches the port can watch every camera")
    if "*" not in settings.CORS_ORIGINS:
        cors = f"✓ CORS: Allowing {', '.join(settings.CORS_ORIGINS)}"
    elif jwt_on:
        cors = "⚠ CORS: Allowing all origins with auth on (set CORS_ORIGINS to the sites that may call the API)"
        log.warning("CORS_ORIGINS allows every origin ('*') while AUTH_MODE=jwt: any web page can call the API "
                    "with a token it holds; set CORS_ORIGINS to the sites that may call it")
    else:
        cors = "✓ CORS: Allowing all origins (development mode)"
    text = "\n".join([
        line, f"Starting {APP_NAME} v{APP_VERSION}", line, video, auth, cors,
        f"✓ Console:  {base}/console", f"✓ Demo:     {base}/demo", f"✓ API docs: {base}/docs",
        f"✓ Health:   {base}/health",
        # printed during lifespan start-up, before uvicorn binds the port: it claims no more than that
        '✓ Start-up done; serving once uvicorn logs "Uvicorn running on …"', line])
    print(clip_lines(redact(text)), flush=True)
