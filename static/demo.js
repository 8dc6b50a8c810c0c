// VisionGuard demo page: no build step, no framework. Talks only to the API of the server that
// serves it. State for tests and curious people: window.vg.
//
// Access control (AUTH_MODE=jwt): the token typed into #token is kept in sessionStorage (this tab
// only) and sent as `Authorization: Bearer …` on every API call. It never goes into a URL (media
// an <img> would load by itself, like snapshots, take the signed `snapshot_url` the API hands out).
//
// Everything shown comes from the server (names, errors): it goes in with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SOURCES_EVERY_MS = 2500; // while connected: the watched source's health, the menu's states
const SOURCES_IDLE_MS = 5000; // otherwise: the menu's states
const FULL_RETRY_S = 5; // a full server that sends no Retry-After
const vg = (window.vg = { status: "idle", statusText: "idle", frameId: null, messages: 0, reconnects: 0,
  sessionId: null, watching: null, source: null, retryIn: null, sources: [], models: [], peer: () => pc });

let pc = null;
let wanted = false; // the person asked to be connected: reconnect after a drop
let retryTimer = null;
let retryDelay = 1000;
let countdownTimer = null;
let retryMessage = "", retryVerb = "";
let statsTimer = null;
let sourcesTimer = null;
let choicesLoaded = false;
let attempts = 0; // each connect() is one: an older one that fails late changes nothing
let sessionToken = ""; // the token the current session was opened with: its DELETE must name the same subject

// The pill: `state` (idle, connecting, connected, reconnecting, unavailable, error) picks its colour
// (data-state), `text` is what it says (the state itself unless given).
function setStatus(state, text) {
  vg.status = state;
  vg.statusText = text || state;
  const pill = $("status");
  pill.textContent = vg.statusText;
  pill.title = vg.statusText;
  pill.dataset.state = state;
}

function stopCountdown() {
  clearInterval(countdownTimer);
  countdownTimer = null;
  vg.retryIn = null;
}

// A message in plain words (empty: hide the box).
function showError(message) {
  stopCountdown();
  const box = $("error");
  if (!message) {
    box.replaceChildren();
    box.hidden = true;
    return;
  }
  const text = document.createElement("span");
  text.id = "error-text";
  text.textContent = message;
  box.replaceChildren(text);
  box.hidden = false;
}

// The message, then "<verb> in N s" counting down to the next try, with a Retry now button.
function showRetry(message, seconds, verb) {
  showError(message);
  retryMessage = message;
  retryVerb = verb;
  const text = $("error-text");
  const button = document.createElement("button");
  button.type = "button";
  button.id = "retry-now";
  button.textContent = "Retry now";
  button.addEventListener("click", retryNow);
  $("error").append(button);
  const due = Date.now() + seconds * 1000;
  const tick = () => {
    vg.retryIn = Math.max(0, Math.ceil((due - Date.now()) / 1000));
    text.textContent = `${message}; ${verb} in ${vg.retryIn} s`;
  };
  tick();
  countdownTimer = setInterval(tick, 1000);
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, seconds * 1000);
}

function retryNow() {
  if (!wanted) return;
  clearTimeout(retryTimer);
  connect();
}

// What the person typed, kept for this tab (an empty field forgets the token).
function keepTypedToken() {
  return VG.keepToken($("token").value);
}

// The server wants a (better) token: show the field and put the cursor in it.
function askForToken() {
  $("auth").hidden = false;
  $("auth").classList.add("needed");
  $("token").focus();
}

// What an error body ({detail, code}) means, in plain words, chosen by its code.
function plainMessage(status, code, detail, token) {
  switch (code) {
    case "invalid_token":
      return `Access denied (HTTP 401): ${detail} ` + (token
        ? "Check the Access token field or paste another token there, then press Connect."
        : "This server needs an access token: paste one into the Access token field, then press Connect.");
    case "insufficient_scope":
      return `Not allowed (HTTP 403): ${detail} Use a token with that scope.`;
    case "server_full":
      return "The server is full";
    case "subject_limit":
      return "You have as many sessions open as your token allows: close one";
    case "not_found":
      return `Not found: ${detail}`;
    case "bad_offer":
      return `The server refused the request: ${detail}`;
    case "model_unavailable":
      return `This model cannot be loaded (${modelReason(detail)}); pick another`;
    default:
      if (status === 401) return plainMessage(status, "invalid_token", detail, token);
      if (status === 403) return plainMessage(status, "insufficient_scope", detail, token);
      if (status === 503) return "The server is busy: " + detail;
      if (status >= 500) return `The server had a problem (HTTP ${status}): ${detail}`;
      return detail;
  }
}

// "Model 'yolo' failed to load: needs MODEL_PATH." → "needs MODEL_PATH"
function modelReason(detail) {
  return String(detail || "").replace(/^Model '[^']*' failed to load: /, "").replace(/\.$/, "");
}

// VG.api with its refusals in plain words (plainMessage, chosen by the body's code); a 401/403
// also brings the token field forward, unless `options.quiet`.
async function api(path, options, token = VG.storedToken()) {
  try {
    return await VG.api(path, options, token);
  } catch (e) {
    if (!e.status) { // the server cannot be reached (the browser's own words for why vary)
      e.message = "The server cannot be reached";
      throw e;
    }
    if ((e.status === 401 || e.status === 403) && !(options && options.quiet)) askForToken();
    e.message = plainMessage(e.status, e.code, e.detail, token);
    throw e;
  }
}

function option(text, value, { disabled = false, title = "" } = {}) {
  const el = document.createElement("option");
  el.textContent = text;
  el.value = value;
  el.disabled = disabled;
  if (title) el.title = title;
  return el;
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

function clip(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// A source's state in the menu: live, idle, reconnecting, unavailable (could not open).
function sourceLabel(s) {
  const state = s.state === "failed" ? "unavailable" : s.state;
  return `${s.name} (${s.kind}, ${state})`;
}

function showSources(all) {
  const sources = all.filter((s) => !s.name.startsWith("file:")); // someone's own file (video_path)
  vg.sources = sources;
  const select = $("source");
  const chosen = select.value;
  const same = select.options.length === sources.length
    && sources.every((s, i) => select.options[i].value === s.name);
  if (!same) {
    select.replaceChildren(...sources.map((s) => option(sourceLabel(s), s.name)));
    if (sources.some((s) => s.name === chosen)) select.value = chosen;
  }
  sources.forEach((s, i) => {
    select.options[i].textContent = sourceLabel(s);
    select.options[i].title = s.last_error ? "last error: " + s.last_error : "";
  });
  if (vg.watching) {
    vg.source = sources.find((s) => s.name === vg.watching) || null;
    showHealth();
  }
}

// Models that cannot load stay listed, disabled, with the reason.
function showModels(models) {
  vg.models = models.models;
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(option(`default (${models.default})`, ""), ...models.models.map((m) => m.state === "error"
    ? option(`${m.name} (unavailable: ${clip(m.error || "cannot load", 60)})`, m.name,
      { disabled: true, title: m.error || "" })
    : option(m.name, m.name, { title: m.type })));
  const still = models.models.find((m) => m.name === chosen && m.state !== "error");
  select.value = still ? chosen : "";
}

async function loadChoices() {
  try {
    const [sources, models] = await Promise.all([api("/api/sources"), api("/api/models")]);
    choicesLoaded = true;
    showSources(sources.sources);
    showModels(models);
    recorder.show();
  } catch (e) {
    showError(e.status === 401 || e.status === 403 ? e.message : "Could not load sources and models: " + e.message);
  }
}

// The sources' states, now and then (often while connected: the watched source's health).
async function refreshSources() {
  clearTimeout(sourcesTimer);
  if (choicesLoaded && document.visibilityState === "visible") {
    try {
      showSources((await api("/api/sources", { quiet: true })).sources);
    } catch (e) { /* shown by the next Connect, if it matters */ }
  }
  clearTimeout(sourcesTimer);
  sourcesTimer = setTimeout(refreshSources, wanted ? SOURCES_EVERY_MS : SOURCES_IDLE_MS);
}

// Connected: green while the source delivers, amber with the reason while it is down.
function showHealth() {
  if (!pc || pc.connectionState !== "connected") return;
  const s = vg.source;
  if (s && (s.state === "reconnecting" || s.state === "failed")) {
    setStatus("unavailable", "source unavailable: " + (s.last_error || s.state));
  } else {
    setStatus("connected");
  }
}

function showDetections(message) {
  vg.frameId = message.frame_id;
  vg.messages += 1;
  $("frame-id").textContent = message.frame_id;
  $("det-count").textContent = message.detections.length;
  $("inference").textContent = message.inference_ms.toFixed(1);
  fill($("detections"), "li", message.detections.map((d) => [`${d.label} ${d.score.toFixed(2)} [${d.box.join(", ")}]`]));
}

// Nothing of a session that ended stays on screen: no last frame, detections or stats.
function clearPanels() {
  const video = $("video");
  video.srcObject = null;
  video.removeAttribute("src");
  vg.frameId = null;
  $("frame-id").textContent = "-";
  $("det-count").textContent = "0";
  $("inference").textContent = "-";
  $("detections").replaceChildren();
  for (const id of ["st-fps", "st-res", "st-codec", "st-rtt", "st-bitrate", "st-dropped"]) $(id).textContent = "-";
  lastBytes = null;
}

// How many viewers a full server has (its open /health counts them); null if unknown.
async function viewerCount() {
  try {
    const health = await (await fetch("/health")).json();
    return Number.isInteger(health.active_sessions) ? health.active_sessions : null;
  } catch (e) {
    return null;
  }
}

async function connect() {
  const attempt = ++attempts;
  clearTimeout(retryTimer);
  if (countdownTimer) {
    stopCountdown();
    if ($("error-text")) $("error-text").textContent = `${retryMessage}; ${retryVerb} now…`;
  }
  wanted = true;
  $("connect").disabled = true;
  $("disconnect").disabled = false;
  setStatus(vg.reconnects ? "reconnecting" : "connecting");
  const mode = $("mode").value;
  const source = mode === "view" ? $("source").value : "";
  const model = $("model").value;
  const token = VG.storedToken();
  vg.watching = mode === "view" ? source || "default" : null;
  vg.source = null;
  try {
    const ice = await api("/api/ice-servers", {}, token);
    const peer = (pc = new RTCPeerConnection({ iceServers: ice.iceServers }));
    if (mode === "camera") {
      const stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      if (peer !== pc) { stream.getTracks().forEach((t) => t.stop()); return; }
      peer.addTransceiver(stream.getVideoTracks()[0], { direction: "sendrecv", streams: [stream] });
    } else {
      peer.addTransceiver("video", { direction: "recvonly" });
    }
    const channel = peer.createDataChannel("detections");
    channel.onmessage = (e) => peer === pc && showDetections(JSON.parse(e.data));
    channel.onclose = () => peer === pc && dropped({ message: "Connection lost (the server closed the session)" });
    peer.ontrack = (e) => { if (peer === pc) $("video").srcObject = e.streams[0] || new MediaStream([e.track]); };
    peer.onconnectionstatechange = () => {
      if (peer !== pc) return;
      const state = peer.connectionState;
      if (state === "connected") {
        setStatus("connected");
        showError("");
        $("auth").classList.remove("needed");
        retryDelay = 1000;
        refreshSources(); // the source's health at once, then every SOURCES_EVERY_MS
      } else if (state === "failed" || state === "disconnected" || state === "closed") {
        dropped({ message: `Connection lost (${state})` });
      }
    };
    await peer.setLocalDescription(await peer.createOffer());
    await VG.iceGathered(peer);
    if (peer !== pc) return;
    const body = { sdp: peer.localDescription.sdp, type: "offer" };
    if (source) body.source = source;
    if (model) body.model = model;
    const answer = await api("/api/offer", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }, token);
    if (peer !== pc) { // Disconnect (or another choice) while the offer was on its way
      fetch("/api/session/" + answer.session_id, VG.withToken({ method: "DELETE" }, token)).catch(() => {});
      return;
    }
    vg.sessionId = answer.session_id;
    sessionToken = token;
    await peer.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    clearInterval(statsTimer);
    statsTimer = setInterval(() => updateStats(peer), 1000);
  } catch (e) {
    if (!wanted || attempt !== attempts) return; // disconnected, or a newer attempt runs
    // A 4xx (bad choice, model failed) or a denied camera will not get better by retrying: stop
    // and let the person change something. A full server (503) or an unreachable one: retry.
    const final = (e.status && e.status < 500 && e.status !== 429) || e.name === "NotAllowedError"
      || e.name === "NotFoundError";
    if (!final) {
      if (e.code === "server_full") {
        const n = await viewerCount();
        if (!wanted || attempt !== attempts) return;
        if (n !== null) e.message = `The server is full (${n} viewer${n === 1 ? "" : "s"})`;
      }
      dropped(e);
      return;
    }
    stop();
    setStatus("error");
    if (e.name === "NotAllowedError") showError("The camera is blocked: allow it for this page, then press Connect.");
    else if (e.name === "NotFoundError") showError("No camera was found.");
    else if (e.code === "model_unavailable") {
      showError(`The model ${model} cannot be loaded (${modelReason(e.detail)}); pick another.`);
      loadChoices(); // it is listed as unavailable from now on
    } else showError(e.message);
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

// The connection dropped (server restart, network) or the server refused for now (full): try
// again, counting down the seconds (the server's Retry-After, else a backoff), and say so.
function dropped(error) {
  if (!wanted) return;
  closePeer();
  clearPanels();
  vg.reconnects += 1;
  setStatus("reconnecting");
  const busy = error.code === "server_full" || error.code === "subject_limit";
  const seconds = error.retryAfter || (busy ? FULL_RETRY_S : Math.round(retryDelay / 1000));
  if (!error.retryAfter && !busy) retryDelay = Math.min(retryDelay * 2, 10000);
  showRetry(error.message, seconds, busy ? "retrying" : "reconnecting");
}

// End the session (if any) and every timer of it; the panels are emptied.
function stop() {
  wanted = false;
  clearTimeout(retryTimer);
  stopCountdown();
  const sessionId = vg.sessionId;
  vg.sessionId = null;
  vg.watching = null;
  vg.source = null;
  if (sessionId) fetch("/api/session/" + sessionId, VG.withToken({ method: "DELETE" }, sessionToken)).catch(() => {});
  closePeer();
  clearPanels();
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  clearTimeout(sourcesTimer); // the source as it is without this viewer, soon; then the slow pace
  sourcesTimer = setTimeout(refreshSources, 1000);
}

// A new source, model or mode while connected: a new session with it (the old one ends).
function applyChoice() {
  recorder.show();
  if (!wanted) return;
  stop();
  vg.reconnects = 0;
  retryDelay = 1000;
  showError("");
  connect();
}

let lastBytes = null;
async function updateStats(peer) {
  if (peer !== pc) return;
  const report = await peer.getStats();
  if (peer !== pc) return; // ended meanwhile: its panels are cleared
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
vg.events = 0;

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

const feed = new VG.EventFeed({
  list: $("events"), stateBox: $("events-state"), shown: EVENTS_SHOWN, item: eventItem, api,
  seen: () => { vg.events += 1; }, reload: () => loadEvents(),
});
Object.defineProperty(vg, "lastEventId", { get: () => feed.lastId, enumerable: true });

async function loadEvents() {
  try {
    await feed.load();
  } catch (e) { /* its state says so ("needs a token", "unavailable"); Connect tries again */ }
}

// -- Recordings: a Record toggle for the selected source (POST/DELETE /api/sources/{name}/record,
// `admin` when access control is on) and the list from /api/recordings, newest first. Play puts
// a row's `download_url` (signed for this token when access control is on, so <video> needs no
// header) into the one #playback element.
const RECORDINGS_EVERY_MS = 10000;
let recordingsDenied = false; // 401/403: wait for Connect (a new token) before asking again
const recorder = new VG.RecordToggle({
  button: $("record"), sourceOf: () => $("source").value, api,
  recordingText: (s) => `Recording… ${s} s`, noSourceTitle: "Record the selected source",
});
vg.recordings = [];
vg.recordingsLoads = 0;

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
  const cells = [r.source, new Date(r.started_at).toLocaleString(), VG.formatDuration(r.duration_s),
    VG.formatBytes(r.bytes), r.state === "failed" && r.error ? `failed: ${r.error}` : r.state];
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
    recorder.learn(body.recordings);
    $("recordings").tBodies[0].replaceChildren(...body.recordings.map(recordingRow));
    $("recordings-state").textContent = body.recordings.length ? "" : "none yet";
  } catch (e) {
    recordingsDenied = e.status === 401 || e.status === 403;
    $("recordings-state").textContent = recordingsDenied ? "needs a token" : "unavailable";
  }
  recorder.show();
}

async function toggleRecord() {
  try {
    if (!(await recorder.toggle())) return;
    if (!countdownTimer) showError(""); // a retry's countdown stays
  } catch (e) {
    showError(e.message); // 401/403 (the token, its scope), 409 already recording, 404 not recording
  }
  await loadRecordings(); // also sets the button to what the server says
}

$("record").addEventListener("click", toggleRecord);
$("source").addEventListener("change", applyChoice);
$("model").addEventListener("change", applyChoice);
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
  clearPanels();
  if (!$("auth").hidden) keepTypedToken();
  if (!choicesLoaded) {
    $("connect").disabled = true;
    await loadChoices(); // they failed before (no token yet at page load): the source list is empty
  }
  loadEvents();
  loadRecordings();
  connect();
});
$("disconnect").addEventListener("click", () => { stop(); showError(""); setStatus("idle"); });
$("mode").addEventListener("change", () => {
  $("source").disabled = $("mode").value === "camera";
  applyChoice();
});
$("token").addEventListener("change", keepTypedToken);
$("token").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !$("connect").disabled) $("connect").click();
});
if (VG.storedToken()) {
  $("token").value = VG.storedToken();
  $("auth").hidden = false;
}
loadChoices().then(() => { sourcesTimer = setTimeout(refreshSources, SOURCES_IDLE_MS); });
loadEvents();
loadRecordings();

// Leaving the page: end the session now rather than at the server's inactivity timeout.
window.addEventListener("pagehide", () => {
  if (vg.sessionId) {
    fetch("/api/session/" + vg.sessionId, VG.withToken({ method: "DELETE", keepalive: true }, sessionToken))
      .catch(() => {});
  }
});
