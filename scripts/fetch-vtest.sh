#!/usr/bin/env bash
# Fetches OpenCV's sample vtest.avi (pedestrians, 768x576, 10 fps, 795 frames; Apache-2.0/BSD-3)
# from the Debian package opencv-doc into media/ (git ignores it), and checks its sha256.
set -euo pipefail
cd "$(dirname "$0")/.."
SHA=45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf
OUT=media/vtest.avi
if [ -f "$OUT" ] && echo "$SHA  $OUT" | sha256sum -c --quiet - 2>/dev/null; then exit 0; fi
mkdir -p .cache/opencv-doc media
cd .cache/opencv-doc
if ! ls opencv-doc_*.deb >/dev/null 2>&1; then
  apt-get download opencv-doc 2>/dev/null || { apt-get update -qq && apt-get download opencv-doc; }
fi
rm -rf x && dpkg -x opencv-doc_*.deb x
cd ../..
cp .cache/opencv-doc/x/usr/share/doc/opencv-doc/examples/data/vtest.avi "$OUT"
rm -rf .cache/opencv-doc/x
echo "$SHA  $OUT" | sha256sum -c --quiet - || { rm -f "$OUT"; echo "vtest.avi: wrong sha256" >&2; exit 1; }
echo "fetched $OUT"
