"""Mint an access token for local testing, signed with the server's own HS secret.

    .venv/bin/python scripts/make-token.py --sub alice --scope view --ttl 3600

The secret comes from the settings the server reads (`config.load_settings()`: environment
variables, then `.env` in the current folder), so run it where you run the server. It prints the
token and nothing else, e.g. `TOKEN=$(.venv/bin/python scripts/make-token.py --sub alice)`.
With `JWT_ISSUER` / `JWT_AUDIENCE` set, the token carries them (the server requires them then).

It refuses, with one line on stderr and exit status 2, when the settings give no HS secret:
`AUTH_MODE` is not `jwt`, `JWT_ALGORITHMS` lists no HS algorithm, or `JWT_SECRET` is unset or
too short. Tokens for RS/ES keys come from your identity provider, not from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from api.tokens import SCOPES, mint_token  # noqa: E402
from config import InvalidSettings, load_settings  # noqa: E402

PROG = "make-token"


def fail(message: str) -> NoReturn:
    print(f"{PROG}: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description="Mint a bearer token (JWT) for local testing, "
                                     "signed with the server's JWT_SECRET. Prints only the token.")
    parser.add_argument("--sub", required=True, help="the subject: who the token names (it owns the sessions "
                        "it opens)")
    parser.add_argument("--scope", default="view", help=f"space-separated scopes from {', '.join(SCOPES)}; "
                        "default: view")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires; default: 3600")
    args = parser.parse_args(argv)
    if not args.sub.strip() or len(args.sub) > 128:
        parser.error("--sub must be 1 to 128 characters")
    scopes = args.scope.split()
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        parser.error(f"--scope takes {', '.join(SCOPES)} (space-separated); got {args.scope!r}")
    args.scope = " ".join(dict.fromkeys(scopes))
    if args.ttl <= 0:
        parser.error("--ttl must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        settings = load_settings()
    except InvalidSettings as exc:  # already one line naming the setting
        fail(str(exc.code))
    if settings.AUTH_MODE != "jwt":
        fail(f"AUTH_MODE is {settings.AUTH_MODE!r}: the server checks no tokens. "
             "Set AUTH_MODE=jwt and JWT_SECRET (environment or .env) first.")
    algorithm = next((a for a in settings.JWT_ALGORITHMS if a.startswith("HS")), None)
    if algorithm is None:
        fail(f"JWT_ALGORITHMS {settings.JWT_ALGORITHMS} lists no HS algorithm: there is no secret to sign with "
             "(RS/ES/PS/EdDSA tokens come from your identity provider).")
    claims = {}
    if settings.JWT_ISSUER:
        claims["iss"] = settings.JWT_ISSUER
    if settings.JWT_AUDIENCE:
        claims["aud"] = settings.JWT_AUDIENCE
    print(mint_token(settings.JWT_SECRET, args.sub, args.scope, args.ttl, algorithm=algorithm, **claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
