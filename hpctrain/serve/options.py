"""The options of ``hpctrain serve`` (light: the CLI builds its flags from these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hpctrain.errors import HpctrainError


# 'hpctrain update': its optimizer.lr as a share of the parent run's (docs/online.md: measured
# with tests/test_update.py's replay test). Here, not in serve.online, so the CLI reads it light.
LR_SCALE = 1.0


class ServeError(HpctrainError):
    """The server cannot start with these options."""


@dataclass(kw_only=True, slots=True)
class ServeOptions:
    model: str = field(metadata={"help": "run directory or model artifact directory"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 127.0.0.1 serves this machine "
                                                              "only, a node's address (or 0.0.0.0) the network"})
    port: int = field(default=8000, metadata={"help": "TCP port"})
    max_batch: int = field(default=64, metadata={"help": "most rows per forward pass (1: no batching)"})
    max_wait_ms: float = field(default=2.0, metadata={"help": "longest a request waits for others to join its batch"})
    workers: int = field(default=1, metadata={"help": "model processes sharing the port"})
    threads: int = field(default=1, metadata={"help": "torch threads per worker"})
    max_body_mb: float = field(default=8.0, metadata={"help": "largest request body accepted (413 above it)"})
    watch: bool = field(default=False, metadata={"help": "swap in a new artifact when it changes on disk"})
    watch_interval_s: float = field(default=0.5, metadata={"help": "how often --watch looks"})
    graceful_timeout_s: float = field(default=30.0, metadata={"help": "on SIGTERM, longest wait for requests "
                                                                      "in flight"})
    log_level: str = field(default="warning", metadata={"help": "uvicorn log level"})
    key: str | None = field(default=None, metadata={
        "help": "key file of an encrypted artifact or run ('export --encrypt', checkpoint.encrypt); each worker "
                "reads it itself"})
    trust_path: bool = field(default=False, metadata={
        "help": "load the model, key and token even from a directory any user can write"})
    token_file: str | None = field(default=None, metadata={
        "help": "file (mode 0600) holding a bearer token that every request but GET /health must send as "
                "'Authorization: Bearer TOKEN'"})

    def __post_init__(self):
        checks = [("port", 0 <= self.port <= 65535, "0..65535"), ("max_batch", self.max_batch >= 1, ">= 1"),
                  ("max_wait_ms", 0 <= self.max_wait_ms <= 10_000, "0..10000"),
                  ("workers", 1 <= self.workers <= 256, "1..256"), ("threads", self.threads >= 1, ">= 1"),
                  ("max_body_mb", 0 < self.max_body_mb <= 4096, "> 0 and <= 4096"),
                  ("watch_interval_s", self.watch_interval_s > 0, "> 0"),
                  ("graceful_timeout_s", self.graceful_timeout_s > 0, "> 0")]
        for name, ok, want in checks:
            if not ok:
                raise ServeError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: expected {want}")
