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

$("connect").addEventListener("click", async () => {
  vg.reconnects = 0;
  retryDelay = 1000;
  showError("");
  if (!$("auth").hidden) keepTypedToken();
  if (!choicesLoaded) {
    $("connect").disabled = true;
    await loadChoices(); // they failed before (no token yet at page load): the source list is empty
  }
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
