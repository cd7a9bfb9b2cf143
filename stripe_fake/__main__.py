"""`python -m stripe_fake --port 12111 [--host 127.0.0.1]`.

Prints exactly one line, "stripe fake listening on http://HOST:PORT", once
the socket accepts connections (port 0 picks a free port), then serves until
SIGTERM/SIGINT. Without localstripe and aiohttp (payworker's `fake` extra) it
says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys

from .control import INSTALL_HINT, missing_requirements


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stripe_fake")
    parser.add_argument("--port", type=int, default=12111, help="0 picks a free port")
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback by default; this fake has no auth"
    )
    return parser.parse_args(argv)


async def _serve(host: str, port: int) -> None:
    # Imported here: without the `fake` extra, main() explains instead of a traceback.
    from aiohttp import web

    from .app import make_app

    # Bind ourselves (IPv4 only, unlike localstripe's '::' on all
    # interfaces) so that with port 0 we know the port before announcing it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Short shutdown: a pending delay fault must not hold up stop().
    runner = web.AppRunner(make_app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()  # listening from here on
    bound_host, bound_port = sock.getsockname()[:2]
    print(f"stripe fake listening on http://{bound_host}:{bound_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    missing = missing_requirements()
    if missing:
        print(f"the Stripe fake needs {' and '.join(missing)}: {INSTALL_HINT}", file=sys.stderr)
        return 2
    asyncio.run(_serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
