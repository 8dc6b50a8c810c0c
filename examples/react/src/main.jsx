import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import VideoPlayer from "./VideoPlayer.jsx";

// The backend is chosen at run time: ?backend=http://host:8000 (default http://localhost:8000).
const params = new URLSearchParams(window.location.search);
const backend = (params.get("backend") || "http://localhost:8000").replace(/\/$/, "");

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <h1 style={{ fontFamily: "sans-serif" }}>VisionGuard</h1>
    <VideoPlayer backend={backend} source={params.get("source")} model={params.get("model")} />
  </StrictMode>,
);
