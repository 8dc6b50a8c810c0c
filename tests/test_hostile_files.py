"""Hostile files given to a source directly (no server): playlists and concat lists that point
outside MEDIA_DIR, a FIFO and a device that would block a reader, and a probe that takes too
long. Names and files sent in offers: test_hostile.py."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from conftest import write_video


# -- point 2: playlists and lists never reach outside MEDIA_DIR ------------------------------
@pytest.mark.parametrize("entry", ["{outside}", "file://{outside}", "../outside/clip.mp4"])
def test_probe_and_file_source_refuse_playlists(media_dir, tmp_path, entry):
    from sources import SourceError, open_source
    from sources.av_source import file_source, probe
    from sources.spec import parse_source

    (tmp_path / "outside").mkdir()
    outside = write_video(tmp_path / "outside" / "clip.mp4", frames=5)
    entry = entry.format(outside=outside)
    playlists = {
        "p.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{entry}\n#EXT-X-ENDLIST\n",
        "p.mp4": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{entry}\n#EXT-X-ENDLIST\n",
        "c.ffconcat": f"ffconcat version 1.0\nfile '{entry}'\n",
    }
    for name, text in playlists.items():
        path = media_dir / name
        path.write_text(text)
        with pytest.raises(SourceError, match=re.escape(name)):
            probe(path)
        source = file_source(path)  # what plays a client's video_path
        with pytest.raises(SourceError):
            source.open()
            source.read()
        source.close()
        # a configured file (VIDEO_FILE_PATH, SOURCES) is read the same way: no playlists either
        configured = open_source(parse_source("lobby", name, media_dir), 640, 480, 30)
        with pytest.raises(SourceError):
            configured.open()
            configured.read()
        configured.close()
    probe(outside)  # a plain file still probes


async def test_fifo_and_device_never_block_a_file_source(media_dir):
    from sources import SourceError
    from sources.av_source import file_source, probe

    fifo = media_dir / "fifo.mp4"
    os.mkfifo(fifo)
    try:
        for target in (fifo, Path("/dev/zero")):
            for attempt in (lambda: file_source(target).open(), lambda: probe(target)):
                with pytest.raises(SourceError, match="regular file"):
                    await asyncio.wait_for(asyncio.to_thread(attempt), 10)
    finally:
        try:  # release a reader stuck in open() (the code before this fix blocked there)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_probe_is_time_limited(media_dir):
    from sources import SourceError
    from sources.av_source import probe

    clip = write_video(media_dir / "clip.mp4", frames=5)
    probe(clip)
    with pytest.raises(SourceError, match="too long"):
        probe(clip, timeout_s=-1)
