#!/usr/bin/env bash
# Installs the Debian packages the project and its tests need, only when one is missing.
# With CI=true a package that cannot be installed is an error; elsewhere it is a warning.
set -euo pipefail

PACKAGES=(
  # the real browser the tests drive (through pip's playwright; never `playwright install`)
  chromium
  # the RTSP server the tests start (GStreamer's gst-rtsp-server, run with Debian's python3)
  python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly
  # the TURN server the relay tests start on loopback (`turnserver`, REST-API auth)
  coturn
  # the Redis server the cluster tests start on loopback (REDIS_URL)
  redis-server
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "system-deps: installing ${missing[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
if $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
  # The tests start their own turnserver; the package's system service (an unconfigured TURN
  # server on every interface) is not wanted on a development machine.
  if [[ " ${missing[*]} " == *" coturn "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now coturn >/dev/null 2>&1 || true
  fi
  # Likewise the tests start their own redis-server on a free port.
  if [[ " ${missing[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
  fi
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  echo "system-deps: could not install ${missing[*]}" >&2
  exit 1
fi
echo "system-deps: WARNING could not install ${missing[*]}; tests that need them will be skipped" >&2
