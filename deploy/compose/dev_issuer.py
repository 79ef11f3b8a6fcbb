"""The gateway's DEVELOPMENT issuer as a process of its own, for deploy/compose.yaml.

NOT FOR PRODUCTION: it signs whatever token it is asked for, without client authentication, with
a key that lives in memory until the process stops (see gateway/dev_issuer.py). ``mcp-auth-gateway
demo`` runs the same issuer inside its own process; compose needs it as a separate service.

    python dev_issuer.py [--issuer http://127.0.0.1:8002] [--host 0.0.0.0] [--port 8002]

Serves ``/.well-known/oauth-authorization-server``, ``/jwks`` and ``POST /token``
(client_credentials, with ``resource=``).
"""

from __future__ import annotations

import argparse
import os

from aiohttp import web

from gateway.demo.dev_issuer import WARNING, DevIssuer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--issuer",
        default=os.environ.get("DEV_ISSUER_URL", "http://127.0.0.1:8002"),
        help="the issuer identifier (the `iss` of its tokens); must equal the gateway config's",
    )
    # All interfaces inside the container, so the published port reaches it.
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 -- a container's own namespace
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    issuer = DevIssuer(args.issuer)
    print(f"{WARNING}: issuer {issuer.issuer} on {args.host}:{args.port}", flush=True)
    web.run_app(issuer.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
