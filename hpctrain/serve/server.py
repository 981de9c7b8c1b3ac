"""``hpctrain serve``: the HTTP front end (Starlette on uvicorn) of a run dir or an artifact.

Endpoints: ``POST /predict``, ``GET /health`` (alive), ``GET /ready`` (model loaded),
``GET /metadata``, ``GET /metrics`` (Prometheus text). Requests go through the
:class:`~hpctrain.serve.batching.MicroBatcher`; bad input is answered with a 4xx and a JSON
``{"error": ...}`` that says what was wrong. SIGTERM: uvicorn stops accepting, waits for the
requests in flight, then the batcher drains and the process exits 0. ``--watch`` polls the
artifact's manifest and swaps a new model in between two forward passes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from hpctrain.errors import HpctrainError
from hpctrain.serve.inputs import RequestError, Schema, parse_body
from hpctrain.serve.options import ServeError, ServeOptions

ENV_OPTIONS = "HPCTRAIN_SERVE_OPTIONS"
ROUTES = {"/predict": "POST", "/health": "GET", "/ready": "GET", "/metadata": "GET", "/metrics": "GET"}


def _watch_target(path: Path) -> Path:
    from hpctrain.rundir import RunDir
    from hpctrain.serve.artifact import MANIFEST, is_artifact

    return path / MANIFEST if is_artifact(path) else RunDir(path).final_checkpoint


def _fingerprint(path: Path) -> tuple | None:
    try:
        st = os.stat(_watch_target(path))
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


# Python's cyclic GC walked the whole heap (torch, the model, uvicorn) on every full
# collection: 50-100 ms pauses that were the server's p99 at concurrency 16 (93 ms, against a
# 5 ms median). Freezing what exists after the model is loaded takes it out of every later
# collection, and a larger first generation makes collections rarer: p99 13.8 ms in the same
# run (docs/benchmarks.md, "Serving").
GC_GEN0 = 10_000


def settle_gc() -> None:
    """Collect once, then freeze every surviving object out of later collections."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def tune_gc() -> None:
    import gc

    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])
    settle_gc()


class Loaded:
    """One loaded model and what the endpoints say about it."""

    def __init__(self, path: Path, trained):
        from hpctrain.serve.artifact import _schema

        self.trained = trained
        self.classes = np.asarray(trained.classes, dtype=np.int64)
        prep = trained.preprocess
        self.schema = Schema(tuple(trained.sample_shape), prep.imputer is not None or prep.on_nan == "zero")
        art = trained.result.get("artifact")
        if art is not None:
            names = art.get("class_names")
            self.meta = {"source": "artifact", "version": art["weights"]["sha256"][:16],
                         "input_schema": art.get("input_schema"), "provenance": art.get("provenance"),
                         "compression": art.get("compression")}
        else:
            sch = _schema(trained.config, trained.sample_shape)
            names = sch["class_names"]
            version = f"{Path(trained.checkpoint).name}@step{trained.result.get('step')}"
            self.meta = {"source": "run", "version": version,
                         "input_schema": {"dtype": "float32", "sample_shape": list(self.schema.sample_shape),
                                          "n_features": self.schema.n_features,
                                          "feature_names": sch["feature_names"],
                                          "missing": "imputed" if prep.imputer is not None else
                                          ("set to 0" if prep.on_nan == "zero" else "rejected")}}
        self.labels = [str(n) for n in names] if names and len(names) == len(self.classes) else \
            [str(c) for c in self.classes]
        self.regression = trained.regression
        self.meta.update({"task": "regression" if trained.regression else "classification",
                          "targets": trained.targets,
                          "model": str(path), "classes": self.classes.tolist(), "class_names": names,
                          "metrics": _finite(trained.result.get("metrics") or {}),
                          "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, Loaded]:
        """Class probabilities, or a regression model's raw outputs (N, targets)."""
        if self.regression:
            return self.trained.logits(x), self
        return self.trained.predict_proba(x), self


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _json(obj: Any, status: int = 200):
    from starlette.responses import Response

    return Response(json.dumps(obj, allow_nan=False), status_code=status, media_type="application/json")


def _error(status: int, message: str):
    return _json({"error": message, "status": status}, status)


class Service:
    """The state of one worker process: the model slot, the batcher, the metrics, the watcher."""

    def __init__(self, opts: ServeOptions, preloaded=None):
        self.opts = opts
        self.path = Path(opts.model)
        self.current: Loaded | None = preloaded
        self.batcher = None
        self.metrics = None
        self._tasks: list[asyncio.Task] = []
        self.limit = int(opts.max_body_mb * 1024 * 1024)

    # -- lifecycle -----------------------------------------------------------------------------
    async def startup(self) -> None:
        import torch

        from hpctrain.serve.batching import MicroBatcher
        from hpctrain.serve.metrics import Metrics

        torch.set_num_threads(self.opts.threads)
        self.metrics = Metrics()
        self.batcher = MicroBatcher(self._forward, max_batch=self.opts.max_batch,
                                    max_wait_s=self.opts.max_wait_ms / 1000.0,
                                    on_batch=self.metrics.batch.observe, on_depth=self.metrics.queue.set)
        self.batcher.start()
        loop = asyncio.get_running_loop()
        if self.current is None:
            # A worker of --workers N loads here, before uvicorn lets it accept: the workers share
            # one listening socket, so a worker that accepted while loading would answer 503 to
            # requests its ready siblings could serve.
            await self._load_first()
        if self.opts.watch:
            self._tasks.append(loop.create_task(self._watch()))
        tune_gc()

    async def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - a failed load is already logged
                pass
        await self.batcher.stop()

    def _forward(self, x: np.ndarray):
        return self.current.forward(x)  # read once per batch: a reload swaps between batches

    async def _load_first(self) -> None:
        from hpctrain.predict import load_run

        fp = _fingerprint(self.path)
        trained = await asyncio.get_running_loop().run_in_executor(None, load_run, self.path)
        self.current = Loaded(self.path, trained)
        self._seen = fp

    async def _watch(self) -> None:
        from hpctrain.predict import load_run

        loop = asyncio.get_running_loop()
        seen = _fingerprint(self.path)
        while True:
            await asyncio.sleep(self.opts.watch_interval_s)
            fp = _fingerprint(self.path)
            if fp is None or fp == seen or self.current is None:
                continue
            seen = fp
            try:
                new = Loaded(self.path, await loop.run_in_executor(None, load_run, self.path))
            except HpctrainError as e:
                self.metrics.reloads.labels("failed").inc()
                print(f"hpctrain serve: reload of {self.path} failed, still serving the previous model: {e}",
                      file=sys.stderr, flush=True)
                continue
            if new.schema.sample_shape != self.current.schema.sample_shape:
                self.metrics.reloads.labels("refused").inc()
                print(f"hpctrain serve: the new model takes samples of shape {new.schema.sample_shape}, the served "
                      f"one {self.current.schema.sample_shape}; not swapped: start a new server for it",
                      file=sys.stderr, flush=True)
                continue
            self.current = new
            settle_gc()  # the old model's objects were frozen with the first one: let them go
            self.metrics.reloads.labels("ok").inc()
            print(f"hpctrain serve: reloaded {self.path} (version {new.meta['version']})", file=sys.stderr,
                  flush=True)

    # -- endpoints -----------------------------------------------------------------------------
    async def predict(self, request):
        t0 = time.perf_counter()
        try:
            if self.current is None:
                return _error(503, "the model is still loading; retry when GET /ready answers 200")
            cl = request.headers.get("content-length")
            if cl is not None and cl.isdigit() and int(cl) > self.limit:
                return _error(413, f"the body has {int(cl)} bytes, over --max-body-mb {self.opts.max_body_mb:g}; "
                                   "send fewer samples per request")
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.limit:
                    return _error(413, f"the body is over --max-body-mb {self.opts.max_body_mb:g}; send fewer "
                                       "samples per request")
            cur = self.current
            try:
                x = parse_body(bytes(body), cur.schema)
            except RequestError as e:
                return _error(e.status, str(e))
            try:
                proba, used = await self.batcher.submit(x)
            except HpctrainError as e:
                # the model's own input checks (e.g. an inf that imputation leaves alone)
                return _error(422, str(e))
            if used.regression:  # float predictions: (N,) for one target, (N, k) for several
                out = proba[:, 0] if proba.shape[1] == 1 else proba
                return _json({"predictions": out.tolist(), "version": used.meta["version"]})
            idx = proba.argmax(axis=1)
            return _json({"predictions": used.classes[idx].tolist(), "labels": [used.labels[i] for i in idx],
                          "probabilities": proba.tolist(), "classes": used.classes.tolist(),
                          "version": used.meta["version"]})
        finally:
            self.metrics.latency.observe(time.perf_counter() - t0)

    async def health(self, request):
        return _json({"status": "ok"})

    async def ready(self, request):
        if self.current is None:
            return _json({"ready": False, "reason": "loading the model"}, 503)
        return _json({"ready": True, "version": self.current.meta["version"]})

    async def metadata(self, request):
        if self.current is None:
            return _error(503, "the model is still loading; retry when GET /ready answers 200")
        o = self.opts
        return _json({**self.current.meta, "server": {"max_batch": o.max_batch, "max_wait_ms": o.max_wait_ms,
                                                       "workers": o.workers, "watch": o.watch,
                                                       "max_body_mb": o.max_body_mb, "pid": os.getpid()}})

    async def prom(self, request):
        from starlette.responses import Response

        body, ctype = self.metrics.render()
        return Response(body, media_type=ctype.split(";")[0], headers={"content-type": ctype})


class _RequireToken:
    """ASGI wrapper: every request except GET /health must carry ``Authorization: Bearer TOKEN``
    (compared in constant time); others get 401 without reaching a route."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        import hmac

        got = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = got.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token):
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "missing or wrong bearer token: send 'Authorization: Bearer TOKEN' (the "
                                    "token in the server's --token-file)"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _CountCodes:
    """ASGI wrapper: every answer, including the router's 404/405, is counted by status code."""

    def __init__(self, app, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        counted = False

        def count(code: int) -> None:
            nonlocal counted
            counted = True
            m = self.service.metrics
            if m is not None:
                path = scope["path"] if scope["path"] in ROUTES else "other"
                m.requests.labels(path, str(code)).inc()
                if code >= 400:
                    m.errors.labels(str(code)).inc()

        async def send_and_count(msg):
            # counted before the answer goes out, so a client that has its answer (and then
            # reads /metrics, perhaps from another worker) always finds it counted
            if msg["type"] == "http.response.start":
                count(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            if not counted:
                count(500)


def build_app(opts: ServeOptions, preloaded=None):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Route

    service = Service(opts, preloaded)

    async def not_found(request, exc):
        known = ", ".join(f"{m} {p}" for p, m in ROUTES.items())
        return _error(404, f"no route {request.method} {request.url.path}; this server answers {known}")

    async def not_allowed(request, exc):
        path = request.url.path
        return _error(405, f"{request.method} {path} is not allowed; use {ROUTES.get(path, 'GET')} {path}")

    @asynccontextmanager
    async def lifespan(app):
        await service.startup()
        try:
            yield
        finally:
            await service.shutdown()

    routes = [Route("/predict", service.predict, methods=["POST"]), Route("/health", service.health),
              Route("/ready", service.ready), Route("/metadata", service.metadata), Route("/metrics", service.prom)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed})
    if opts.token_file:
        from hpctrain.secure.keys import read_token

        app = _RequireToken(app, read_token(opts.token_file))
    return _CountCodes(app, service)


def worker_app():
    """The app of one worker process under ``--workers N`` (uvicorn imports it by name)."""
    opts = ServeOptions(**json.loads(os.environ[ENV_OPTIONS]))
    if opts.key:  # the path travels in the environment, never the key
        from hpctrain.secure import keyring

        keyring.add(opts.key)
    return build_app(opts)


def _uvicorn_kwargs(opts: ServeOptions) -> dict:
    import importlib.util

    kw = {"host": opts.host, "port": opts.port, "log_level": opts.log_level, "access_log": False,
          "timeout_graceful_shutdown": int(math.ceil(opts.graceful_timeout_s)), "lifespan": "on"}
    # the C parser and event loop when installed (the [serve] extra has them); pure Python otherwise
    if importlib.util.find_spec("httptools"):
        kw["http"] = "httptools"
    if importlib.util.find_spec("uvloop"):
        kw["loop"] = "uvloop"
    return kw


def _check_bind(host: str, port: int) -> None:
    """A taken port or a foreign address as one line now (uvicorn would log it and exit 1)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"--host {host!r} does not resolve ({e}); give an address of this machine, e.g. "
                         "127.0.0.1") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port, or a --host "
                             "address this machine has") from None


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(opts: ServeOptions) -> int:
    """Run until SIGTERM or Ctrl-C; 0 after a graceful shutdown."""
    import tempfile

    from hpctrain.extras import require

    for module in ("starlette", "prometheus_client", "safetensors"):
        require(module, "hpctrain serve")
    if opts.trust_path:
        from hpctrain.secure.cliargs import TRUST_ENV

        os.environ[TRUST_ENV] = "1"  # this process and the workers it starts
    if opts.key:
        from hpctrain.secure import keyring

        keyring.add(opts.key)
    uvicorn = require("uvicorn", "hpctrain serve")
    from hpctrain.predict import load_run

    # load once here so a bad model fails now, as one line, instead of inside every worker
    trained = load_run(opts.model)
    _check_bind(opts.host, opts.port)
    if opts.token_file:
        from hpctrain.secure.keys import read_token

        read_token(opts.token_file)  # a missing or open token file: one line now, not in each worker
    elif not _loopback(opts.host):
        print(f"hpctrain serve: warning: listening on {opts.host}, reachable from other machines, without "
              "--token-file: anyone who can reach the port can use the model", file=sys.stderr, flush=True)
    kw = _uvicorn_kwargs(opts)
    where = f"http://{opts.host}:{opts.port}"
    print(f"hpctrain serve: {opts.model} on {where} (POST /predict, GET /health /ready /metadata /metrics; "
          f"max batch {opts.max_batch}, max wait {opts.max_wait_ms:g} ms, {opts.workers} worker(s))", flush=True)
    # uvicorn re-raises the signal that stopped it after a graceful shutdown, so that the
    # default action would kill the process with it; a handler here makes that a no-op and
    # the command returns 0 as a finished server should
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    if opts.workers == 1:
        config = uvicorn.Config(build_app(opts, Loaded(Path(opts.model), trained)), **kw)
        server = uvicorn.Server(config)
        try:
            server.run()
        except OSError as e:
            raise ServeError(f"cannot listen on {opts.host}:{opts.port} ({e}); choose another --port") from None
        return 0 if server.started else 1
    del trained
    with tempfile.TemporaryDirectory(prefix="hpctrain-serve-metrics-") as mp:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp
        os.environ[ENV_OPTIONS] = json.dumps(asdict(opts))
        uvicorn.run("hpctrain.serve.server:worker_app", factory=True, workers=opts.workers, **kw)
    return 0
