"""Start-up and wiring: the core, its REST (with admin) and gRPC listeners, in-process or as a program.

`python -m serving.gateway --config gateway.toml [--rest-port N ...]` runs `main()`; in-process,
`start_gateway(settings)` returns a handle with `.rest_port`, `.grpc_port`, `.url` and `.stop()`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from concurrent.futures import Future
from typing import Any, Sequence

from aiohttp import web

from core.errors import MlopsError
from serving.gateway.admin import AdminApi
from serving.gateway.config import (GatewayConfigError, GatewaySettings, add_settings_arguments, load_gateway_settings,
                                    settings_overrides)
from serving.gateway.core import GatewayCore
from serving.gateway.grpc_service import build_grpc_server
from serving.gateway.rest import RestApi
from serving.tensor_protos import serving_apis

log = logging.getLogger(__name__)


class Gateway:
    """A gateway: the core and its two listeners; `start()`/`stop()` run on its event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.core = GatewayCore(settings)
        self.rest_port = 0
        self.grpc_port = 0
        self._runner: web.AppRunner | None = None
        self._grpc_server: Any = None

    async def start(self) -> None:
        """Opens the logs, the upstream connections and both listeners; undoes all of it if any step fails."""
        try:
            await self._start()
        except BaseException:
            if self._runner is not None:
                await self._runner.cleanup()
            await self.core.close()
            raise

    async def _start(self) -> None:
        s = self.settings
        await self.core.open()
        app = web.Application(client_max_size=s.max_body_bytes)
        RestApi(self.core).add_routes(app)
        AdminApi(self.core).add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.host, s.rest_port, shutdown_timeout=5.0, backlog=1024,
                           ssl_context=_rest_tls(s))
        await site.start()
        self.rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._grpc_server = build_grpc_server(self.core)
        address = f"{s.host}:{s.grpc_port}"
        credentials = _grpc_tls(s)
        self.grpc_port = (self._grpc_server.add_secure_port(address, credentials) if credentials is not None
                          else self._grpc_server.add_insecure_port(address))
        await self._grpc_server.start()
        log.info("gateway listening: REST %s:%d, gRPC %s:%d -> model server %s (%s)", s.host, self.rest_port, s.host,
                 self.grpc_port, s.model_server_rest if s.upstream_protocol == "rest" else s.model_server_grpc, s.upstream_protocol)

    async def stop(self) -> None:
        """Stops accepting, lets in-flight requests finish, sends queued shadow copies, then writes every log row."""
        await self._grpc_server.stop(grace=5.0)
        await self._runner.cleanup()  # closes the listener, waits for running handlers
        await self.core.drain()
        await self.core.close()


def _rest_tls(settings: GatewaySettings) -> Any:
    """The REST listener's TLS context (None: plaintext); a bad pair fails at start, naming the files."""
    if not settings.tls:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (ssl.SSLError, OSError) as err:
        raise GatewayConfigError(f"cannot use the TLS pair {settings.tls_cert_file} / {settings.tls_key_file}: {err}") from err
    return context


def _grpc_tls(settings: GatewaySettings) -> Any:
    if not settings.tls:
        return None
    import grpc

    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])


class GatewayHandle:
    """A gateway running on its own event loop thread: `.rest_port`, `.grpc_port`, `.url`, `.stop()`."""

    def __init__(self, gateway: Gateway, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.rest_port = gateway.rest_port
        self.grpc_port = gateway.grpc_port
        self._loop = loop
        self._thread = thread
        self._stopped = False

    @property
    def url(self) -> str:
        return f"{'https' if self.settings.tls else 'http'}://{self.settings.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    def call(self, coroutine: Any, timeout: float = 60.0) -> Any:
        """Runs a coroutine on the gateway's loop from another thread (admin helpers, tests)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def flush_logs(self, timeout: float = 30.0) -> None:
        """Waits until every row logged so far is on disk."""
        self.gateway.core.request_log.flush(timeout)
        self.gateway.core.feedback_log.flush(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Graceful stop: in-flight requests finish, queued shadow copies are sent, every log row is written."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.call(self.gateway.stop(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> "GatewayHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using the default asyncio loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def start_gateway(settings: GatewaySettings | None = None, **overrides: Any) -> GatewayHandle:
    """Starts a gateway on a background thread and returns once it listens (port 0 = a free port).

    `overrides` are GatewaySettings fields applied on top of `settings` (or of the defaults plus
    `MLOPS_GATEWAY_*` variables when `settings` is None).
    """
    if settings is None:
        settings = load_gateway_settings(overrides=overrides)
    elif overrides:
        import dataclasses

        settings = dataclasses.replace(settings, **overrides)
    serving_apis()  # load the protos before the loop thread needs them
    loop = _new_loop(settings.use_uvloop)
    started: Future = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            gateway = Gateway(settings)
            loop.run_until_complete(gateway.start())
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            started.set_exception(err)
            loop.close()
            return
        started.set_result(gateway)
        loop.run_forever()
        pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, name="gateway-loop", daemon=True)
    thread.start()
    try:
        gateway = started.result(timeout=120)
    except BaseException:
        thread.join(30)
        raise
    return GatewayHandle(gateway, loop, thread)


def run_gateway(settings: GatewaySettings) -> None:
    """Runs the gateway in this thread until SIGTERM or SIGINT, then stops it gracefully."""
    serving_apis()
    loop = _new_loop(settings.use_uvloop)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        gateway = Gateway(settings)
        await gateway.start()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        scheme = "https" if settings.tls else "http"
        print(f"gateway: REST {scheme}://{settings.host}:{gateway.rest_port}  gRPC {settings.host}:{gateway.grpc_port}"
              f"{' (TLS)' if settings.tls else ''}", flush=True)
        await stop.wait()
        log.info("stopping: draining requests and writing the prediction log")
        await gateway.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gateway", description="The serving gateway (TF Serving protocol).")
    parser.add_argument("--config", help="gateway TOML file ([gateway] and [models.<name>] tables)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_gateway_settings(args.config, overrides=settings_overrides(args))
        run_gateway(settings)
    except MlopsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

