// VisionGuard demo page: no build step, no framework. Talks only to the API of the server that
// serves it. State for tests and curious people: window.vg.
//
// Access control (AUTH_MODE=jwt): the token typed into #token is kept in sessionStorage (this tab
// only) and sent as `Authorization: Bearer …` on every API call. It never goes into a URL (media
// an <img> would load by itself, like snapshots, take the signed `snapshot_url` the API hands out).
"use strict";

const $ = (id) => document.getElementById(id);
const GATHER_CAP_MS = 2000;
const TOKEN_KEY = "visionguard.token";
const vg = (window.vg = { status: "idle", frameId: null, messages: 0, reconnects: 0, sessionId: null,
  peer: () => pc });

let pc = null;
let wanted = false; // the person asked to be connected: reconnect after a drop
let retryTimer = null;
let retryDelay = 1000;
let statsTimer = null;
let choicesLoaded = false;
let sessionToken = ""; // the token the current session was opened with: its DELETE must name the same subject

function setStatus(text, cls) {
  vg.status = text;
  $("status").textContent = text;
  $("status").className = "status " + (cls || text);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

// What the person typed, kept for this tab (an empty field forgets the token).
function keepTypedToken() {
  const token = $("token").value.trim().replace(/^Bearer\s+/i, "");
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  return token;
}

// The server wants a (better) token: show the field and put the cursor in it.
function askForToken() {
  $("auth").hidden = false;
  $("auth").classList.add("needed");
  $("token").focus();
}

function withToken(options, token) {
  const headers = new Headers((options && options.headers) || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  return { ...options, headers };
}

async function api(path, options, token = storedToken()) {
  let response;
  try {
    response = await fetch(path, withToken(options, token));
  } catch (e) {
    throw new Error("The server cannot be reached (" + e.message + ").");
  }
  if (!response.ok) {
    let detail = "HTTP " + response.status;
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (e) { /* not JSON */ }
    if (response.status === 503) detail = "The server is full: " + detail;
    if (response.status === 401) {
      detail = `Access denied (HTTP 401): ${detail} ` + (token
        ? "Check the Access token field or paste another token there, then press Connect."
        : "This server needs an access token: paste one into the Access token field, then press Connect.");
      askForToken();
    } else if (response.status === 403) {
      detail = `Not allowed (HTTP 403): ${detail} Use a token with that scope.`;
      askForToken();
    }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

// Build elements with textContent: names and labels come from the server's configuration.
function fill(parent, tag, items) {
  parent.replaceChildren(...items.map(([text, value]) => {
    const el = document.createElement(tag);
    el.textContent = text;
    if (value !== undefined) el.value = value;
    return el;
  }));
}

async function loadChoices() {
  try {
    const [sources, models] = await Promise.all([api("/api/sources"), api("/api/models")]);
    choicesLoaded = true;
    fill($("source"), "option", sources.sources.map((s) => [`${s.name} (${s.kind}, ${s.state})`, s.name]));
    fill($("model"), "option", [[`default (${models.default})`, ""]].concat(
      models.models.filter((m) => m.state !== "error").map((m) => [m.name, m.name])));
    showRecordButton();
  } catch (e) {
    showError(e.status === 401 || e.status === 403 ? e.message : "Could not load sources and models: " + e.message);
  }
}

function waitForIceGathering(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_CAP_MS);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

function showDetections(message) {
  vg.frameId = message.frame_id;
  vg.messages += 1;
  $("frame-id").textContent = message.frame_id;
  $("det-count").textContent = message.detections.length;
  $("inference").textContent = message.inference_ms.toFixed(1);
  fill($("detections"), "li", message.detections.map((d) => [`${d.label} ${d.score.toFixed(2)} [${d.box.join(", ")}]`]));
}

async function connect() {
  clearTimeout(retryTimer);
  wanted = true;
  $("connect").disabled = true;
  $("disconnect").disabled = false;
  setStatus(vg.reconnects ? "reconnecting" : "connecting");
  const mode = $("mode").value;
  const token = storedToken();
  try {
    const ice = await api("/api/ice-servers", {}, token);
    const peer = (pc = new RTCPeerConnection({ iceServers: ice.iceServers }));
    if (mode === "camera") {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      peer.addTransceiver(stream.getVideoTracks()[0], { direction: "sendrecv", streams: [stream] });
    } else {
      peer.addTransceiver("video", { direction: "recvonly" });
    }
    const channel = peer.createDataChannel("detections");
    channel.onmessage = (e) => showDetections(JSON.parse(e.data));
    channel.onclose = () => peer === pc && dropped("the server closed the session");
    peer.ontrack = (e) => { $("video").srcObject = e.streams[0] || new MediaStream([e.track]); };
    peer.onconnectionstatechange = () => {
      if (peer !== pc) return;
      const state = peer.connectionState;
      if (state === "connected") {
        setStatus("connected");
        showError("");
        $("auth").classList.remove("needed");
        retryDelay = 1000;
      } else if (state === "failed" || state === "disconnected" || state === "closed") {
        dropped("connection " + state);
      }
    };
    await peer.setLocalDescription(await peer.createOffer());
    await waitForIceGathering(peer);
    const body = { sdp: peer.localDescription.sdp, type: "offer" };
    if (mode === "view" && $("source").value) body.source = $("source").value;
    if ($("model").value) body.model = $("model").value;
    const answer = await api("/api/offer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }, token);
    if (peer !== pc) return;
    vg.sessionId = answer.session_id;
    sessionToken = token;
    await peer.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    clearInterval(statsTimer);
    statsTimer = setInterval(() => updateStats(peer), 1000);
  } catch (e) {
    // A 4xx (bad choice, model failed) or a denied camera will not get better by retrying: stop
    // and let the person change something. A full server (503) or an unreachable one: retry.
    const final = (e.status && e.status < 500 && e.status !== 429) || e.name === "NotAllowedError"
      || e.name === "NotFoundError";
    if (final) {
      stop();
      setStatus("error");
      showError(e.message);
    } else {
      dropped(e.message);
    }
  }
}

function closePeer() {
  clearInterval(statsTimer);
  if (pc) {
    const old = pc;
    pc = null;
    old.getSenders().forEach((s) => s.track && s.track.stop());
    old.close();
  }
}

// The connection dropped (server restart, network): try again with backoff, and say so.
function dropped(reason) {
  if (!wanted) return;
  closePeer();
  vg.reconnects += 1;
  setStatus("reconnecting");
  showError(`Connection lost (${reason}). Reconnecting in ${Math.round(retryDelay / 1000)} s…`);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 10000);
}

function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  const sessionId = vg.sessionId;
  vg.sessionId = null;
  if (sessionId) fetch("/api/session/" + sessionId, withToken({ method: "DELETE" }, sessionToken)).catch(() => {});
  closePeer();
  $("connect").disabled = false;
  $("disconnect").disabled = true;
}

let lastBytes = null;
async function updateStats(peer) {
  if (peer !== pc) return;
  const report = await peer.getStats();
  let inbound = null, pair = null;
  const byId = {};
  report.forEach((s) => {
    byId[s.id] = s;
    if (s.type === "inbound-rtp" && s.kind === "video") inbound = s;
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  if (!inbound) return;
  const codec = inbound.codecId && byId[inbound.codecId];
  $("st-fps").textContent = inbound.framesPerSecond != null ? inbound.framesPerSecond.toFixed(0) : "-";
  $("st-res").textContent = inbound.frameWidth ? `${inbound.frameWidth}×${inbound.frameHeight}` : "-";
  $("st-codec").textContent = codec ? codec.mimeType.replace("video/", "") : "-";
  $("st-rtt").textContent = pair && pair.currentRoundTripTime != null
    ? (pair.currentRoundTripTime * 1000).toFixed(0) + " ms" : "-";
  if (lastBytes) {
    const kbps = ((inbound.bytesReceived - lastBytes.bytes) * 8) / (inbound.timestamp - lastBytes.t);
    $("st-bitrate").textContent = kbps.toFixed(0) + " kbit/s";
  }
  lastBytes = { bytes: inbound.bytesReceived, t: inbound.timestamp };
  $("st-dropped").textContent = inbound.framesDropped != null ? inbound.framesDropped : "-";
  vg.framesDecoded = inbound.framesDecoded;
}

// -- Events: newest first, live over Server-Sent Events. The list comes from /api/events, then
// the stream (`stream_url`: signed for this token when access control is on, so EventSource
// needs no header). Thumbnails load through each event's signed `snapshot_url`.
const EVENTS_SHOWN = 20;
let eventSource = null;
let eventRetry = null;
vg.events = 0;
vg.lastEventId = null;

function eventItem(e) {
  const li = document.createElement("li");
  li.dataset.id = e.id;
  if (e.snapshot_url) {
    const img = document.createElement("img");
    img.src = e.snapshot_url;
    img.alt = `snapshot of event ${e.id}`;
    img.loading = "lazy";
    li.append(img);
  }
  const text = document.createElement("span");
  const what = e.type === "person_seen" ? "person seen" : "person gone";
  text.textContent = `${new Date(e.ts * 1000).toLocaleTimeString()} · ${e.source} · ${what} (${e.count})`;
  li.append(text);
  return li;
}

function showEvent(e) {
  if (vg.lastEventId !== null && e.id <= vg.lastEventId) return; // already shown
  vg.lastEventId = e.id;
  vg.events += 1;
  const list = $("events");
  list.prepend(eventItem(e));
  while (list.children.length > EVENTS_SHOWN) list.lastChild.remove();
}

async function loadEvents() {
  if (eventSource) return;
  clearTimeout(eventRetry);
  try {
    const since = vg.lastEventId !== null ? `&since=${vg.lastEventId}` : "";
    const body = await api(`/api/events?limit=${EVENTS_SHOWN}${since}`);
    body.events.slice().reverse().forEach(showEvent); // oldest first: the newest ends on top
    let url = body.stream_url;
    if (vg.lastEventId !== null) url += (url.includes("?") ? "&" : "?") + "last_event_id=" + vg.lastEventId;
    const source = (eventSource = new EventSource(url));
    for (const type of ["person_seen", "person_gone"]) {
      source.addEventListener(type, (m) => showEvent(JSON.parse(m.data)));
    }
    source.addEventListener("reset", () => { // the server's ids began again (it keeps no EVENTS_FILE)
      vg.lastEventId = null;
      $("events").replaceChildren();
    });
    source.onopen = () => { $("events-state").textContent = "live"; };
    source.onerror = () => {
      // EventSource reconnects by itself (with Last-Event-ID); a refused reconnect (the signed
      // URL expired) closes it: ask for a fresh URL and resume from the last event shown.
      $("events-state").textContent = "reconnecting";
      if (source.readyState === EventSource.CLOSED && eventSource === source) {
        eventSource = null;
        eventRetry = setTimeout(loadEvents, 3000);
      }
    };
  } catch (e) {
    $("events-state").textContent = e.status === 401 || e.status === 403 ? "needs a token" : "unavailable";
  }
}

// -- Recordings: a Record toggle for the selected source (POST/DELETE /api/sources/{name}/record,
// `admin` when access control is on) and the list from /api/recordings, newest first. Play puts
// a row's `download_url` (signed for this token when access control is on, so <video> needs no
// header) into the one #playback element.
const RECORDINGS_EVERY_MS = 10000;
let recordBusy = false;
let recordTimer = null;
let recordingsDenied = false; // 401/403: wait for Connect (a new token) before asking again
const recordingSince = {}; // source → start (ms since the epoch) of its recording in progress
vg.recordings = [];
vg.recordingsLoads = 0;

function formatBytes(n) {
  return n >= 1024 * 1024 ? (n / (1024 * 1024)).toFixed(1) + " MB" : Math.ceil(n / 1024) + " KB";
}

function formatDuration(s) {
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s % 60)).padStart(2, "0")}`;
}

function showRecordButton() {
  const button = $("record");
  const source = $("source").value;
  const since = recordingSince[source];
  button.disabled = recordBusy || !source;
  button.classList.toggle("on", since !== undefined);
  button.setAttribute("aria-pressed", String(since !== undefined));
  if (since !== undefined) {
    button.textContent = `Recording… ${Math.max(0, Math.round((Date.now() - since) / 1000))} s`;
    button.title = "Stop recording " + source;
  } else {
    button.textContent = "Record";
    button.title = source ? "Record " + source : "Record the selected source";
  }
  clearInterval(recordTimer);
  if (since !== undefined) recordTimer = setInterval(showRecordButton, 1000);
}

function playRecording(r) {
  const video = $("playback");
  vg.playing = r.recording_id;
  video.muted = true;
  video.playsInline = true;
  video.src = r.download_url;
  video.play().catch((e) => { if (e.name !== "AbortError") showError("Cannot play the recording: " + e.message); });
}

function recordingRow(r) {
  const tr = document.createElement("tr");
  tr.dataset.id = r.recording_id;
  tr.dataset.state = r.state;
  const cells = [r.source, new Date(r.started_at).toLocaleString(), formatDuration(r.duration_s),
    formatBytes(r.bytes), r.state === "failed" && r.error ? `failed: ${r.error}` : r.state];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  const td = document.createElement("td");
  const play = document.createElement("button");
  play.type = "button";
  play.className = "play";
  play.textContent = "Play";
  play.disabled = r.state === "recording" || r.bytes === 0; // still being written, or nothing to play
  play.addEventListener("click", () => playRecording(r));
  td.append(play);
  tr.append(td);
  return tr;
}

async function loadRecordings() {
  try {
    const body = await api("/api/recordings");
    recordingsDenied = false;
    vg.recordings = body.recordings;
    vg.recordingsLoads += 1;
    for (const key of Object.keys(recordingSince)) delete recordingSince[key];
    for (const r of body.recordings) { // the newest first: keep each source's newest in progress
      // the Record button stands for the source routes: manual and continuous recordings
      const bySource = r.trigger === "manual" || r.trigger === "continuous";
      if (r.state === "recording" && bySource && !(r.source in recordingSince)) {
        recordingSince[r.source] = Date.parse(r.started_at);
      }
    }
    $("recordings").tBodies[0].replaceChildren(...body.recordings.map(recordingRow));
    $("recordings-state").textContent = body.recordings.length ? "" : "none yet";
  } catch (e) {
    recordingsDenied = e.status === 401 || e.status === 403;
    $("recordings-state").textContent = recordingsDenied ? "needs a token" : "unavailable";
  }
  showRecordButton();
}

async function toggleRecord() {
  const source = $("source").value;
  if (!source || recordBusy) return;
  const path = `/api/sources/${encodeURIComponent(source)}/record`;
  const stopping = recordingSince[source] !== undefined;
  recordBusy = true;
  showRecordButton();
  try {
    if (stopping) {
      await api(path, { method: "DELETE" });
      delete recordingSince[source];
    } else {
      const started = await api(path, { method: "POST" });
      recordingSince[source] = Date.parse(started.started_at);
    }
    showError("");
  } catch (e) {
    showError(e.message); // 401/403 (the token, its scope), 409 already recording, 404 not recording
  } finally {
    recordBusy = false;
    await loadRecordings(); // also sets the button to what the server says
  }
}

$("record").addEventListener("click", toggleRecord);
$("source").addEventListener("change", showRecordButton);
$("playback").addEventListener("error", () => {
  const error = $("playback").error;
  if (error && $("playback").getAttribute("src")) showError("Cannot play the recording: " + (error.message || "code " + error.code));
});
setInterval(() => {
  if (document.visibilityState === "visible" && !recordingsDenied) loadRecordings();
}, RECORDINGS_EVERY_MS);
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !recordingsDenied) loadRecordings();
});

$("connect").addEventListener("click", async () => {
  vg.reconnects = 0;
  retryDelay = 1000;
  showError("");
  if (!$("auth").hidden) keepTypedToken();
  if (!choicesLoaded) {
    $("connect").disabled = true;
    await loadChoices(); // they failed before (no token yet at page load): the source list is empty
  }
  loadEvents();
  loadRecordings();
  connect();
});
$("disconnect").addEventListener("click", () => { stop(); setStatus("idle"); });
$("mode").addEventListener("change", () => { $("source").disabled = $("mode").value === "camera"; });
$("token").addEventListener("change", keepTypedToken);
$("token").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !$("connect").disabled) $("connect").click();
});
if (storedToken()) {
  $("token").value = storedToken();
  $("auth").hidden = false;
}
loadChoices();
loadEvents();
loadRecordings();
