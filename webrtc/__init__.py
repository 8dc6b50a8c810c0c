"""WebRTC: peer connections and what they need — `sdp` (offers checked before anything is
built, the negotiated codec read from the answer), `ice` (ICE servers and host addresses),
`answer` (an offer answered with a viewer's track) and `sessions` (their lifetime)."""
