import { useEffect, useRef, useState } from "react";

const GATHER_CAP_MS = 2000; // send the offer with what ICE found by then

function waitForIceGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      pc.removeEventListener("icegatheringstatechange", check);
      clearTimeout(timer);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, GATHER_CAP_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function apiError(response) {
  let detail;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    detail = `HTTP ${response.status}`;
  }
  if (response.status === 401) return `Access denied (HTTP 401): ${detail}`;
  if (response.status === 403) return `Not allowed (HTTP 403): ${detail}`;
  return detail;
}

/** The request headers for one API call: the token goes in `Authorization`, never in a URL. */
function headers(token, extra = {}) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/**
 * Plays a VisionGuard source over WebRTC and lists its detections.
 *
 * `token`: a bearer token (JWT) for a server with AUTH_MODE=jwt, sent as `Authorization: Bearer …`
 * on every API call; leave it out when access control is off.
 */
export default function VideoPlayer({ backend, source = null, model = null, token = null }) {
  const videoRef = useRef(null);
  const pcRef = useRef(null);
  const sessionRef = useRef(null); // { id, token }: the DELETE must name the subject that opened it
  const [status, setStatus] = useState("idle");
  const [error, setError] = useState("");
  const [latest, setLatest] = useState(null);

  const disconnect = async () => {
    const pc = pcRef.current;
    const session = sessionRef.current;
    pcRef.current = null;
    sessionRef.current = null;
    if (session) {
      // tell the server at once instead of letting it time the session out
      await fetch(`${backend}/api/session/${session.id}`, { method: "DELETE", headers: headers(session.token) })
        .catch(() => {});
    }
    if (pc) pc.close();
    setStatus("idle");
  };

  const connect = async () => {
    setError("");
    setStatus("connecting");
    try {
      const iceResponse = await fetch(`${backend}/api/ice-servers`, { headers: headers(token) });
      if (!iceResponse.ok) throw new Error(await apiError(iceResponse));
      const ice = await iceResponse.json();
      const pc = new RTCPeerConnection({ iceServers: ice.iceServers });
      pcRef.current = pc;
      // The offer must ask for video: a receive-only transceiver (the seed's offer had none).
      pc.addTransceiver("video", { direction: "recvonly" });
      const channel = pc.createDataChannel("detections");
      channel.onmessage = (e) => setLatest(JSON.parse(e.data));
      pc.ontrack = (e) => {
        videoRef.current.srcObject = e.streams[0] || new MediaStream([e.track]);
      };
      pc.onconnectionstatechange = () => setStatus(pc.connectionState);

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc);
      const body = { sdp: pc.localDescription.sdp, type: "offer" };
      if (source) body.source = source;
      if (model) body.model = model;
      const response = await fetch(`${backend}/api/offer`, {
        method: "POST",
        headers: headers(token, { "Content-Type": "application/json" }),
        body: JSON.stringify(body),
      });
      if (!response.ok) throw new Error(await apiError(response));
      const answer = await response.json();
      sessionRef.current = { id: answer.session_id, token };
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    } catch (e) {
      setError(String(e.message || e));
      await disconnect();
      setStatus("error");
    }
  };

  useEffect(() => () => void disconnect(), []); // leave cleanly on unmount

  return (
    <div style={{ fontFamily: "sans-serif" }}>
      <video ref={videoRef} autoPlay playsInline muted width={640} height={480} style={{ background: "#222" }} />
      <div>
        <button onClick={connect} disabled={status === "connecting" || status === "connected"}>Connect</button>{" "}
        <button onClick={disconnect}>Disconnect</button>{" "}
        <span data-testid="status">{status}</span>
      </div>
      {error && <p role="alert" style={{ color: "crimson" }}>{error}</p>}
      <p data-testid="frame">frame: {latest ? latest.frame_id : "-"}</p>
      <ul data-testid="detections">
        {(latest?.detections || []).map((d, i) => (
          <li key={i}>{d.label} {d.score.toFixed(2)} [{d.box.join(", ")}]</li>
        ))}
      </ul>
    </div>
  );
}
