"""Mint a token to join a test room, for a client talking to examples/agent.py.

Reads LIVEKIT_API_KEY, LIVEKIT_API_SECRET and LIVEKIT_URL from the environment:

    python examples/token.py [--room segments-test] [--identity tester] [--ttl-minutes 60]

Prints the server URL and a JWT that lets that identity join that room; paste both into any
LiveKit client (for example the Agents Playground) to talk to the agent.
"""

from __future__ import annotations

import os
import sys

# this folder holds token.py, which as sys.path[0] would shadow the standard library's
# `token` module (imported by logging through tokenize): take the folder off the path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse
import datetime
from collections.abc import Mapping, Sequence

from livekit import api

REQUIRED = ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "LIVEKIT_URL")


def mint_token(
    *,
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    ttl: datetime.timedelta = datetime.timedelta(hours=1),
) -> str:
    """A JWT that lets ``identity`` join ``room`` (publish, subscribe, data), valid for ``ttl``."""
    if ttl <= datetime.timedelta(0):
        raise ValueError(f"ttl must be positive, got {ttl}: the token would be expired at once")
    return (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_ttl(ttl)
        .with_grants(
            api.VideoGrants(
                room_join=True,
                room=room,
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
            )
        )
        .to_jwt()
    )


def _positive_minutes(value: str) -> int:
    try:
        minutes = int(value)
    except ValueError:
        minutes = 0
    if minutes <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of minutes > 0")
    return minutes


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--room", default="segments-test")
    parser.add_argument("--identity", default="tester")
    parser.add_argument("--ttl-minutes", type=_positive_minutes, default=60, metavar="MINUTES")
    args = parser.parse_args(argv)

    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        print(
            f"missing {', '.join(missing)}: export them (from your LiveKit Cloud project "
            "settings or your server's config) and run again",
            file=sys.stderr,
        )
        return 2
    token = mint_token(
        api_key=env["LIVEKIT_API_KEY"],
        api_secret=env["LIVEKIT_API_SECRET"],
        room=args.room,
        identity=args.identity,
        ttl=datetime.timedelta(minutes=args.ttl_minutes),
    )
    print(f"url:   {env['LIVEKIT_URL']}")
    print(f"room:  {args.room}")
    print(f"token: {token}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
