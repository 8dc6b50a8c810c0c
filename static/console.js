// VisionGuard operator console: every source as a tile (state, figures, a snapshot refreshed every
// few seconds), one live WebRTC view at a time, the person events as they happen, the recordings
// and the service's health. No build step, no framework; text only ever goes in as textContent.
// State for tests and curious people: window.vgc.
//
// Snapshots, not WebRTC sessions, fill the grid: a 16-camera wall costs no session share, and the
// server keeps a source started for a snapshot warm for SNAPSHOT_LINGER_S, so refreshes do not
// restart its pipeline. With AUTH_MODE=jwt, images, videos and the event stream load through the
// signed URLs the API hands out (fresh ones with every /api/sources answer), and what the token's
// scope does not allow (admin actions) is hidden.
"use strict";

const $ = (id) => document.getElementById(id);
const { api, el } = VG;
const SOURCES_EVERY_MS = 4000; // tiles: states, figures and snapshots
const HEALTH_EVERY_MS = 5000;
const RECORDINGS_EVERY_MS = 10000;
const EVENTS_SHOWN = 30;
const DELETE_CONFIRM_MS = 4000;

const vgc = (window.vgc = {
  authOn: false, sources: [], sourcesLoads: 0, snapshotsLoaded: 0, health: null, healthLoads: 0,
  events: 0, recordings: [], recordingsLoads: 0,
  live: { source: null, status: "idle", frameId: null, messages: 0, sessionId: null },
  peer: () => livePeer,
});

let denied = false; // the API refused this tab's token (401/403): polling waits for Sign in

// -- access -----------------------------------------------------------------------------------
function canAdmin() {
  return !vgc.authOn || VG.tokenScopes(VG.storedToken()).includes("admin");
}

function applyAccess() {
  document.body.classList.toggle("no-admin", !canAdmin());
  const token = VG.storedToken();
  if (vgc.authOn) $("auth").hidden = false;
  $("sign-out").hidden = !token;
  const scopes = token ? VG.tokenScopes(token) : [];
  $("auth-scope").textContent = vgc.authOn && token && !denied ? `scope: ${scopes.join(" ") || "none"}` : "";
}

// Signed media URLs mean access control is on (the API signs only then).
function noticeSigned(url) {
  if (url && url.includes("sig=") && !vgc.authOn) {
    vgc.authOn = true;
    applyAccess();
  }
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// A refusal: 401/403 bring the token field back with the server's reason; anything else is shown.
function failed(what, e) {
  if (e.status === 401 || e.status === 403) {
    vgc.authOn = true;
    denied = true;
    const token = VG.storedToken();
    const reason = e.status === 401
      ? `Access denied (HTTP 401): ${e.message}` + (token ? " Paste another token." : " This server needs an access token.")
      : `Not allowed (HTTP 403): ${e.message} Use a token with that scope.`;
    $("auth").hidden = false;
    $("auth").classList.add("needed");
    $("auth-reason").textContent = reason; // beside the field, not in the error banner as well
    if ($("error").textContent.startsWith("Access denied") || $("error").textContent.startsWith("Not allowed")) {
      showError("");
    }
    if (document.activeElement === document.body || !document.activeElement) $("token").focus();
    applyAccess();
  } else {
    showError(`${what}: ${e.message}`);
  }
}

function signIn() {
  VG.keepToken($("token").value);
  denied = false;
  $("auth-reason").textContent = "";
  $("auth").classList.remove("needed");
  showError("");
  applyAccess();
  refreshSources();
  refreshHealth();
  restartEvents();
  loadRecordings();
}

function signOut() {
  VG.keepToken("");
  $("token").value = "";
  closeLive();
  signIn();
}

// A fresh URL for a media path the browser loads by itself (signed for this token when access
// control is on; signed URLs expire after SIGNED_URL_TTL_S).
async function mediaUrl(url) {
  if (!vgc.authOn) return url;
  const body = await api("/api/signed-url", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ path: url.split("?")[0] }),
  });
  return body.url;
}

// -- camera grid ------------------------------------------------------------------------------
const tiles = new Map(); // source name → tile parts

function makeTile(name) {
  const root = el("article", null, "tile");
  root.dataset.source = name;
  root.tabIndex = 0;
  root.setAttribute("role", "button");
  root.setAttribute("aria-label", `Open the live view of ${name}`);
  const thumb = el("div", null, "thumb");
  const img = el("img");
  img.alt = `snapshot of ${name}`;
  const state = el("span", "…", "state");
  const persons = el("span", "", "persons");
  persons.title = "persons in the newest processed frame";
  const nopic = el("span", "no picture yet", "nopic");
  thumb.append(img, nopic, state, persons);
  const title = el("div", null, "title");
  const kind = el("span", "", "kind");
  title.append(el("strong", name), kind);
  const figures = el("div", "", "figures");
  const reason = el("p", "", "reason");
  reason.hidden = true;
  root.append(thumb, title, figures, reason);
  const tile = { root, img, state, persons, kind, figures, reason, loading: false, url: null };
  img.addEventListener("load", () => {
    tile.loading = false;
    root.classList.add("pictured");
    vgc.snapshotsLoaded += 1;
    if (root.dataset.state === "idle") refreshSoon(); // the snapshot started it: show its state now
  });
  img.addEventListener("error", () => { // 503: no frame yet (the reason is on the tile)
    tile.loading = false;
    root.classList.remove("pictured");
  });
  const open = () => openLive(name);
  root.addEventListener("click", open);
  root.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
  $("grid").append(root);
  tiles.set(name, tile);
  return tile;
}

function updateTile(tile, s) {
  tile.root.dataset.state = s.state;
  tile.state.textContent = s.state;
  tile.state.className = "state " + s.state;
  tile.kind.textContent = s.kind + (s.always_on ? " · always on" : "");
  tile.persons.textContent = s.persons == null ? "" : `${s.persons} ${s.persons === 1 ? "person" : "persons"}`;
  tile.persons.hidden = s.persons == null;
  const size = s.width ? `${s.width}×${s.height}` : "-×-";
  const viewers = `${s.viewers} ${s.viewers === 1 ? "viewer" : "viewers"}`;
  tile.figures.textContent = `${size} · ${s.fps.toFixed(1)} fps · ${viewers} · ${s.model}`;
  const trouble = (s.state === "failed" || s.state === "reconnecting") && s.last_error;
  tile.reason.textContent = trouble ? s.last_error : "";
  tile.reason.hidden = !trouble;
  tile.root.title = trouble ? `${s.name}: ${s.last_error}` : s.name;
  refreshSnapshot(tile, s.snapshot_url);
}

// Reload the tile's picture, unless the last one is still loading. Without access control the
// path never changes: a cache-buster makes it a new request; signed URLs are new every time.
function refreshSnapshot(tile, url) {
  if (!url || tile.loading || document.visibilityState !== "visible") return;
  const next = vgc.authOn ? url : url + (url.includes("?") ? "&" : "?") + "t=" + Date.now();
  if (next === tile.url) return; // the same signed URL (within its second): no new request would be made
  tile.loading = true;
  tile.url = next;
  tile.img.src = next;
}

let soon = null;
function refreshSoon() {
  if (!soon) soon = setTimeout(() => { soon = null; refreshSources(); }, 300);
}

async function refreshSources() {
  if (denied) return;
  try {
    const body = await api("/api/sources");
    body.sources.forEach((s) => noticeSigned(s.snapshot_url));
    vgc.sources = body.sources;
    vgc.sourcesLoads += 1;
    const names = new Set(body.sources.map((s) => s.name));
    for (const [name, tile] of tiles) {
      if (!names.has(name)) { tile.root.remove(); tiles.delete(name); }
    }
    for (const s of body.sources) updateTile(tiles.get(s.name) || makeTile(s.name), s);
    const down = body.sources.filter((s) => s.state === "failed" || s.state === "reconnecting").length;
    const count = body.sources.length;
    $("grid-state").textContent = `${count} ${count === 1 ? "source" : "sources"}` + (down ? ` · ${down} down` : "");
    if (!$("error").hidden && $("error").textContent.startsWith("Sources:")) showError("");
    showRecordSources();
    showFigures();
  } catch (e) {
    failed("Sources", e);
  }
}

// -- health strip -----------------------------------------------------------------------------
async function refreshHealth() {
  try {
    const body = await api("/health", {}, "");
    vgc.health = body;
    vgc.healthLoads += 1;
    $("health-status").textContent = body.status;
    $("health-status").className = "badge " + body.status;
    $("health-sessions").textContent = `${body.active_sessions} ${body.active_sessions === 1 ? "session" : "sessions"}`;
    $("health-problems").replaceChildren(...body.problems.map((p) => el("li", p)));
  } catch (e) {
    vgc.health = null;
    $("health-status").textContent = "unreachable";
    $("health-status").className = "badge down";
    $("health-problems").replaceChildren(el("li", e.message));
  }
}

// Each running source's processed fps and inference time (from the last /api/sources answer).
function showFigures() {
  const running = vgc.sources.filter((s) => s.processed_fps > 0 || s.mean_inference_ms != null);
  $("health-figures").replaceChildren(...running.map((s) => {
    const ms = s.mean_inference_ms != null ? `${s.mean_inference_ms.toFixed(1)} ms` : "- ms";
    const span = el("span", `${s.name} ${s.processed_fps.toFixed(1)} fps · ${ms}`, "figure");
    span.dataset.source = s.name;
    return span;
  }));
}

// -- live view (one at a time) ----------------------------------------------------------------
let livePeer = null;
let liveSession = null; // { id, token }: its DELETE must name the same subject

function setLiveStatus(text) {
  vgc.live.status = text;
  $("live-status").textContent = text;
  $("live-status").className = "badge " + text;
}

function showLiveError(message) {
  $("live-error").textContent = message;
  $("live-error").hidden = !message;
}

function showDetections(message) {
  vgc.live.frameId = message.frame_id;
  vgc.live.messages += 1;
  $("live-frame").textContent = message.frame_id;
  $("live-count").textContent = message.detections.length;
  $("live-inference").textContent = message.inference_ms.toFixed(1);
  $("live-detections").replaceChildren(...message.detections.map(
    (d) => el("li", `${d.label} ${d.score.toFixed(2)} [${d.box.join(", ")}]`)));
}

let liveGeneration = 0; // each openLive and stopLive begins a new one: a late await finds it changed

function liveErrorText(e) {
  if (e.code === "server_full") return "The server is full right now; close this view and try again in a moment.";
  if (e.code === "subject_limit") return "You already hold as many live sessions as you may; close one first.";
  return e.message;
}

async function openLive(name) {
  stopLive();
  const generation = liveGeneration;
  vgc.live = { source: name, status: "idle", frameId: null, messages: 0, sessionId: null };
  $("live-title").textContent = name;
  $("live-detections").replaceChildren();
  $("live-frame").textContent = "-";
  $("live-count").textContent = "0";
  $("live-inference").textContent = "-";
  showLiveError("");
  if (!$("live").open) $("live").showModal();
  setLiveStatus("connecting");
  const token = VG.storedToken();
  let peer = null;
  try {
    const ice = await api("/api/ice-servers", {}, token);
    if (generation !== liveGeneration) return; // closed, or another tile opened, while we waited
    peer = livePeer = new RTCPeerConnection({ iceServers: ice.iceServers });
    peer.addTransceiver("video", { direction: "recvonly" });
    const channel = peer.createDataChannel("detections");
    channel.onmessage = (e) => peer === livePeer && showDetections(JSON.parse(e.data));
    peer.ontrack = (e) => { $("live-video").srcObject = e.streams[0] || new MediaStream([e.track]); };
    peer.onconnectionstatechange = () => {
      if (peer !== livePeer) return;
      const state = peer.connectionState;
      if (state === "connected") {
        setLiveStatus("connected");
        showLiveError("");
      } else if (state === "failed" || state === "disconnected" || state === "closed") {
        setLiveStatus("lost");
        showLiveError(`The connection was lost (${state}). Close this view and open the tile again.`);
      }
    };
    await peer.setLocalDescription(await peer.createOffer());
    await VG.iceGathered(peer);
    const answer = await api("/api/offer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: peer.localDescription.sdp, type: "offer", source: name }),
    }, token);
    if (peer !== livePeer) { // closed meanwhile: end the session the server just made
      endSession({ id: answer.session_id, token });
      return;
    }
    liveSession = { id: answer.session_id, token };
    vgc.live.sessionId = answer.session_id;
    await peer.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
  } catch (e) {
    if (generation !== liveGeneration || (peer !== null && peer !== livePeer)) return;
    setLiveStatus("error");
    showLiveError(liveErrorText(e));
    if (e.status === 401 || e.status === 403) failed("Live view", e);
  }
}

function endSession(session) {
  return fetch("/api/session/" + encodeURIComponent(session.id), VG.withToken({ method: "DELETE" }, session.token))
    .catch(() => {});
}

// End the live session (the dialog stays as it is): DELETE it first, then close the peer (its
// close would end the session too, and the DELETE would find nothing).
function stopLive() {
  liveGeneration += 1;
  const session = liveSession, old = livePeer;
  liveSession = null;
  livePeer = null;
  if (old) (session ? endSession(session) : Promise.resolve()).finally(() => old.close());
  else if (session) endSession(session);
  $("live-video").srcObject = null;
  vgc.live.sessionId = null;
  setLiveStatus("idle");
}

function closeLive() {
  stopLive();
  if ($("live").open) $("live").close();
}

$("live-close").addEventListener("click", closeLive);
window.addEventListener("pagehide", () => { // leaving the page: end the session now, not at its timeout
  if (liveSession) {
    fetch("/api/session/" + encodeURIComponent(liveSession.id),
      VG.withToken({ method: "DELETE", keepalive: true }, liveSession.token)).catch(() => {});
  }
});
$("live").addEventListener("close", stopLive); // Escape too

// -- events -----------------------------------------------------------------------------------

function eventLabel(e) {
  const what = e.type === "person_seen" ? "person seen" : "person gone";
  return `${what} (${e.count})`;
}

function eventItem(e) {
  const li = el("li");
  li.dataset.id = e.id;
  li.dataset.source = e.source;
  li.tabIndex = 0;
  li.setAttribute("role", "button");
  if (e.snapshot_url) {
    const img = el("img");
    img.src = e.snapshot_url;
    img.alt = `snapshot of event ${e.id}`;
    img.loading = "lazy";
    li.append(img);
  } else {
    li.append(el("span", "", "noimg"));
  }
  const text = el("div", null, "text");
  text.append(el("strong", e.source), el("span", eventLabel(e), e.type),
    el("time", new Date(e.ts * 1000).toLocaleTimeString()));
  if (e.recording_id) text.append(el("span", "recorded", "tag"));
  li.append(text);
  const open = () => openEvent(e);
  li.addEventListener("click", open);
  li.addEventListener("keydown", (k) => { if (k.key === "Enter") open(); });
  return li;
}

const feed = new VG.EventFeed({
  list: $("events"), stateBox: $("events-state"), shown: EVENTS_SHOWN, item: eventItem,
  seen: (e) => { vgc.events += 1; noticeSigned(e.snapshot_url); }, reload: () => loadEvents(),
});
Object.defineProperty(vgc, "lastEventId", { get: () => feed.lastId, enumerable: true });

function restartEvents() {
  feed.close();
  loadEvents();
}

async function loadEvents() {
  if (denied) return;
  try {
    const body = await feed.load();
    if (body) noticeSigned(body.stream_url);
  } catch (e) {
    if (e.status === 401 || e.status === 403) failed("Events", e);
    else feed.retry = setTimeout(loadEvents, 5000);
  }
}

// The event's snapshot, large, and its recording when it has one.
async function openEvent(e) {
  openMedia(`${eventLabel(e)} · ${e.source} · ${new Date(e.ts * 1000).toLocaleString()}`);
  try {
    if (e.snapshot_url) {
      $("media-image").src = await mediaUrl(e.snapshot_url);
      $("media-image").alt = `snapshot of event ${e.id}`;
      $("media-image").hidden = false;
    }
    if (!e.recording_id) {
      $("media-note").textContent = e.snapshot_url ? "" : "This event has no snapshot.";
      return;
    }
    const body = await api(`/api/recordings?source=${encodeURIComponent(e.source)}`);
    const r = body.recordings.find((x) => x.recording_id === e.recording_id);
    if (!r) $("media-note").textContent = "Its recording is no longer kept.";
    else if (!r.bytes) $("media-note").textContent = "Its recording has no video yet.";
    else {
      $("media-note").textContent = r.state === "recording" ? "Recording: still being written." : "";
      playMedia(r);
    }
  } catch (err) {
    $("media-note").textContent = err.message;
  }
}

// -- media dialog (an event, or a recording) --------------------------------------------------
function openMedia(title) {
  const video = $("media-video");
  video.pause();
  video.removeAttribute("src");
  video.hidden = true;
  $("media-image").hidden = true;
  $("media-image").removeAttribute("src");
  $("media-download").hidden = true;
  $("media-note").textContent = "";
  $("media-title").textContent = title;
  if (!$("media").open) $("media").showModal();
}

function playMedia(r) {
  const video = $("media-video");
  vgc.playing = r.recording_id;
  video.hidden = false;
  video.muted = true;
  video.src = r.download_url;
  video.play().catch((e) => { if (e.name !== "AbortError") $("media-note").textContent = "Cannot play: " + e.message; });
  $("media-download").href = r.download_url;
  $("media-download").hidden = false;
}

function closeMedia() {
  $("media-video").pause();
  $("media-video").removeAttribute("src");
  vgc.playing = null;
  if ($("media").open) $("media").close();
}

$("media-close").addEventListener("click", closeMedia);
$("media").addEventListener("close", closeMedia);
$("media-video").addEventListener("error", () => {
  const error = $("media-video").error;
  if (error && $("media-video").getAttribute("src")) {
    $("media-note").textContent = "Cannot play the recording: " + (error.message || "code " + error.code);
  }
});

// -- recordings -------------------------------------------------------------------------------
const recorder = new VG.RecordToggle({
  button: $("rec-toggle"), sourceOf: () => $("rec-source").value,
  recordingText: (s) => `Stop · ${s} s`, noSourceTitle: "Pick a source to record it",
});

function showRecordSources() {
  const select = $("rec-source");
  const chosen = select.value;
  const names = vgc.sources.map((s) => s.name);
  const have = [...select.options].slice(1).map((o) => o.value);
  if (names.join("\n") !== have.join("\n")) {
    select.replaceChildren(new Option("all sources", ""), ...names.map((n) => new Option(n, n)));
    select.value = names.includes(chosen) ? chosen : "";
  }
  recorder.show();
}

function recordingRow(r) {
  const tr = el("tr");
  tr.dataset.id = r.recording_id;
  tr.dataset.state = r.state;
  tr.dataset.source = r.source;
  const started = new Date(r.started_at);
  const cells = [r.source, started.toLocaleTimeString(), VG.formatDuration(r.duration_s), VG.formatBytes(r.bytes),
    r.state === "failed" && r.error ? `failed: ${r.error}` : r.state + (r.trigger !== "manual" ? ` (${r.trigger})` : "")];
  for (const text of cells) tr.append(el("td", text));
  tr.cells[1].title = started.toLocaleString();
  const td = el("td", null, "actions");
  const play = el("button", "Play", "play");
  play.type = "button";
  play.disabled = r.bytes === 0;
  play.addEventListener("click", () => { openMedia(`${r.source} · ${started.toLocaleString()}`); playMedia(r); });
  const download = el("a", "Download", "download");
  download.href = r.download_url;
  download.download = `${r.source}-${r.recording_id.slice(0, 8)}.mp4`;
  if (r.bytes === 0) download.hidden = true;
  const remove = el("button", "Delete", "delete admin-only");
  remove.type = "button";
  remove.disabled = r.state === "recording";
  remove.title = r.state === "recording" ? "Stop it first" : "Delete this recording";
  remove.addEventListener("click", () => deleteRecording(r, remove));
  td.append(play, download, remove);
  tr.append(td);
  return tr;
}

async function loadRecordings() {
  if (denied) return;
  const source = $("rec-source").value;
  try {
    const body = await api("/api/recordings" + (source ? `?source=${encodeURIComponent(source)}` : ""));
    if ($("rec-source").value !== source) return; // the choice changed meanwhile: its own load follows
    vgc.recordings = body.recordings;
    vgc.recordingsLoads += 1;
    recorder.learn(body.recordings);
    $("recordings").tBodies[0].replaceChildren(...body.recordings.map(recordingRow));
    $("recordings-state").textContent = body.recordings.length ? `${body.recordings.length}` : "none yet";
  } catch (e) {
    $("recordings-state").textContent = e.status === 401 || e.status === 403 ? "needs a token" : "unavailable";
    if (e.status === 401 || e.status === 403) failed("Recordings", e);
  }
  recorder.show();
}

async function toggleRecord() {
  const source = $("rec-source").value;
  try {
    if (!(await recorder.toggle())) return;
    showError("");
  } catch (e) {
    if (e.status === 401 || e.status === 403) failed("Record", e);
    else showError(`Record ${source}: ${e.message}`); // 409 already recording, 404 not recording
  }
  await loadRecordings();
}

// Two clicks: the first arms the button for a few seconds, the second deletes.
async function deleteRecording(r, button) {
  if (!button.classList.contains("armed")) {
    button.classList.add("armed");
    button.textContent = "Confirm";
    setTimeout(() => { button.classList.remove("armed"); button.textContent = "Delete"; }, DELETE_CONFIRM_MS);
    return;
  }
  button.disabled = true;
  try {
    await api("/api/recordings/" + encodeURIComponent(r.recording_id), { method: "DELETE" });
    if (vgc.playing === r.recording_id) closeMedia();
  } catch (e) {
    if (e.status === 401 || e.status === 403) failed("Delete", e);
    else showError(`Delete: ${e.message}`);
  }
  await loadRecordings();
}

$("rec-toggle").addEventListener("click", toggleRecord);
$("rec-source").addEventListener("change", () => { recorder.show(); loadRecordings(); });

// -- start ------------------------------------------------------------------------------------
$("sign-in").addEventListener("click", signIn);
$("sign-out").addEventListener("click", signOut);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") signIn(); });

function visible() {
  return document.visibilityState === "visible";
}

setInterval(() => visible() && refreshSources(), SOURCES_EVERY_MS);
setInterval(() => visible() && refreshHealth(), HEALTH_EVERY_MS);
setInterval(() => visible() && loadRecordings(), RECORDINGS_EVERY_MS);
document.addEventListener("visibilitychange", () => {
  if (visible()) { refreshSources(); refreshHealth(); }
});
if (VG.storedToken()) $("token").value = VG.storedToken();
applyAccess();
refreshHealth();
refreshSources();
loadEvents();
loadRecordings();
