import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import VideoPlayer from "./VideoPlayer.jsx";

// The backend is chosen at run time: ?backend=http://host:8000 (default http://localhost:8000).
const params = new URLSearchParams(window.location.search);
const backend = (params.get("backend") || "http://localhost:8000").replace(/\/$/, "");
const TOKEN_KEY = "visionguard.token";

// A token (AUTH_MODE=jwt) is pasted into the page, kept in sessionStorage for this tab, and handed
// to VideoPlayer, which sends it as an Authorization header. Never put a token in the URL.
function App() {
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY) || "");
  const update = (e) => {
    const value = e.target.value.trim();
    setToken(value);
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  };
  return (
    <>
      <h1 style={{ fontFamily: "sans-serif" }}>VisionGuard</h1>
      <p style={{ fontFamily: "sans-serif" }}>
        <label>
          Access token (only if the server has AUTH_MODE=jwt){" "}
          <input type="password" value={token} onChange={update} autoComplete="off" spellCheck={false} size={40}
                 data-testid="token" />
        </label>
      </p>
      <VideoPlayer backend={backend} source={params.get("source")} model={params.get("model")}
                   token={token || null} />
    </>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
