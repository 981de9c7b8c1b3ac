"""hpctrain serve as a real process, driven over loopback by a real HTTP client (http.client):
predictions equal the in-process ones, concurrent requests are batched (seen in /metrics),
every bad input gets its 4xx while the server keeps serving, SIGTERM with 50 requests in
flight loses none, and a hot reload under load fails none."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn")
pytest.importorskip("safetensors")

from hpctrain.cli import main  # noqa: E402
from hpctrain.predict import load_run  # noqa: E402
from serve_helpers import train_tiny_run, val_rows  # noqa: E402

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = train_tiny_run(root)
    assert main(["export", str(run), "--out", str(root / "model")]) == 0
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if r.getheader("content-type", "").startswith("application/json")
                          else data.decode())
    finally:
        c.close()


def predict(port, rows, key="instances"):
    return request(port, "POST", "/predict", json.dumps({key: rows}), {"Content-Type": "application/json"})


class Server:
    def __init__(self, target, *args, log=None):
        self.port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "hpctrain", "serve", str(target), "--port",
                                      str(self.port), *args], env=env, stdout=log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode} before it was ready")
            try:
                if request(self.port, "GET", "/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("the server was not ready within 60 s")
            time.sleep(0.1)

    def metrics(self) -> str:
        status, text = request(self.port, "GET", "/metrics")
        assert status == 200
        return text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def sample(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture()
def server(model):
    s = Server(model / "model", "--max-wait-ms", "20")
    yield s
    assert s.stop() == 0


def test_predictions_equal_in_process(model, server):
    x, _ = val_rows(model)
    ref = load_run(model / "model")
    rows = [[None if np.isnan(v) else float(v) for v in r] for r in x.reshape(len(x), -1)]
    status, body = predict(server.port, rows)
    assert status == 200, body
    # one request runs as one forward pass over exactly these rows: equal bit for bit
    np.testing.assert_array_equal(np.asarray(body["probabilities"], dtype=np.float32), ref.predict_proba(x))
    assert body["predictions"] == ref.predict(x).tolist()
    names = dict(zip([2, 5, 9], ["two", "five", "nine"]))
    assert body["labels"] == [names[p] for p in body["predictions"]]
    status, one = predict(server.port, rows[0], key="instance")
    assert status == 200 and one["predictions"] == body["predictions"][:1]
    status, meta = request(server.port, "GET", "/metadata")
    assert status == 200 and meta["classes"] == [2, 5, 9] and meta["input_schema"]["missing"] == "imputed"
    assert meta["metrics"]["val_macro_f1"] == ref.result["metrics"]["val_macro_f1"]
    assert request(server.port, "GET", "/health") == (200, {"status": "ok"})


def test_concurrent_requests_are_batched(model, server):
    x, _ = val_rows(model)
    x = np.nan_to_num(x[:40])
    ref = load_run(model / "model").predict(x)
    got = [None] * len(x)
    start = threading.Barrier(len(x))

    def one(i):
        start.wait()
        got[i] = predict(server.port, [x[i].tolist()])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(x))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert all(g is not None and g[0] == 200 for g in got), got
    assert [g[1]["predictions"][0] for g in got] == ref.tolist()
    text = server.metrics()
    batches = sample(text, "hpctrain_batch_size_count")
    singles = sample(text, "hpctrain_batch_size_bucket", '{le="1.0"}')
    assert sample(text, "hpctrain_batch_size_sum") == len(x)
    assert batches < len(x) and batches - singles >= 1, text  # some forward passes held several requests
    assert sample(text, "hpctrain_requests_total", '{code="200",path="/predict"}') == len(x)


def test_every_bad_input_gets_its_4xx_and_the_server_keeps_serving(model):
    s = Server(model / "model", "--max-body-mb", "0.001")
    try:
        cases = [
            ("POST", "/predict", b"not json", 400, "not JSON"),
            ("POST", "/predict", b"[1, 2, 3, 4]", 422, "expected an object"),
            ("POST", "/predict", b'{"instances": []}', 422, "empty"),
            ("POST", "/predict", b'{"instances": [[1, 2, 3]]}', 422, "4 features"),
            ("POST", "/predict", b'{"instances": [[1, 2, 3, 4], [1, 2]]}', 422, "ragged"),
            ("POST", "/predict", b'{"instances": [[1, "2", 3, 4]]}', 422, "type ['str']"),
            ("POST", "/predict", b'{"instances": [[1, true, 3, 4]]}', 422, "type ['bool']"),
            ("POST", "/predict", b'{"instances": [[1, 2, 3, Infinity]]}', 422, "infinite"),
            ("POST", "/predict", b'{"rows": [[1, 2, 3, 4]]}', 422, "instances"),
            ("POST", "/predict", json.dumps({"instances": [[1.5] * 4] * 100}).encode(), 413, "--max-body-mb"),
            ("GET", "/predict", None, 405, "use POST /predict"),
            ("DELETE", "/metrics", None, 405, "use GET /metrics"),
            ("GET", "/nope", None, 404, "no route GET /nope"),
        ]
        for method, path, body, code, words in cases:
            status, answer = request(s.port, method, path, body)
            assert status == code and words in answer["error"], (method, path, body, answer)
            assert request(s.port, "GET", "/health")[0] == 200
        # a chunked body (no Content-Length) over the limit is cut off too
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=TIMEOUT)
        c.request("POST", "/predict", body=iter([b'{"instances": [' + b"[1, 2, 3, 4], " * 200, b"[1, 2, 3, 4]]}"]),
                  encode_chunked=True)
        assert c.getresponse().status == 413
        c.close()
        assert predict(s.port, [[1, None, 3, 4]])[0] == 200  # missing values are imputed
        text = s.metrics()
        assert sample(text, "hpctrain_request_errors_total", '{code="422"}') == 8
        assert sample(text, "hpctrain_request_errors_total", '{code="413"}') == 2
        assert sample(text, "hpctrain_request_errors_total", '{code="405"}') == 2
    finally:
        assert s.stop() == 0


def test_nan_without_an_imputer_is_refused(tmp_path):
    run = train_tiny_run(tmp_path, epochs=1)
    # the same run, its imputer removed from the artifact
    assert main(["export", str(run), "--out", str(tmp_path / "m")]) == 0
    m = json.loads((tmp_path / "m" / "artifact.json").read_text())
    m["imputer"] = None
    (tmp_path / "m" / "artifact.json").write_text(json.dumps(m))
    s = Server(tmp_path / "m")
    try:
        status, answer = predict(s.port, [[1, None, 3, 4]])
        assert status == 422 and "no imputer" in answer["error"]
        assert predict(s.port, [[1, 2, 3, 4]])[0] == 200
    finally:
        assert s.stop() == 0


def test_sigterm_with_50_in_flight_loses_none(model):
    # a long batching window holds all 50 requests inside the server when SIGTERM arrives
    s = Server(model / "model", "--max-wait-ms", "10000", "--max-batch", "1000")
    results = []

    def one():
        results.append(predict(s.port, [[1.0, 2.0, 3.0, 4.0]]))

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + TIMEOUT
    while sample(s.metrics(), "hpctrain_queue_depth") < 50:
        assert time.monotonic() < deadline, "the 50 requests never queued"
        time.sleep(0.05)
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(TIMEOUT)
    assert s.stop() == 0
    assert len(results) == 50 and all(r[0] == 200 for r in results), results
    with pytest.raises(OSError):  # it stopped accepting
        request(s.port, "GET", "/health", timeout=5)


def test_hot_reload_under_load_fails_none(model, tmp_path):
    second = train_tiny_run(tmp_path, seed=7)
    s = Server(model / "model", "--watch", "--watch-interval-s", "0.1")
    old = request(s.port, "GET", "/ready")[1]["version"]
    stop = threading.Event()
    answers: list[list] = [[] for _ in range(4)]

    def load(out):
        for _ in range(2000):  # bounded; ends once the reload has been seen under load
            if stop.is_set():
                return
            status, body = predict(s.port, [[1.0, None, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5]])
            out.append((status, body.get("version") if isinstance(body, dict) else body))

    threads = [threading.Thread(target=load, args=(a,)) for a in answers]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while sum(len(a) for a in answers) < 20:  # under load on the old model first
            assert time.monotonic() < deadline, "the load threads got no answers"
            time.sleep(0.05)
        assert main(["export", str(second), "--out", str(model / "model"), "--force"]) == 0
        deadline = time.monotonic() + TIMEOUT
        while request(s.port, "GET", "/ready")[1]["version"] == old:
            assert time.monotonic() < deadline, "the new artifact was never swapped in"
            time.sleep(0.05)
        time.sleep(0.5)  # more load on the new model
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        code = s.stop()
    flat = [a for out in answers for a in out]
    assert all(status == 200 for status, _ in flat), [a for a in flat if a[0] != 200][:3]
    versions = {v for _, v in flat}
    assert old in versions and len(versions) == 2, versions
    assert code == 0


def test_workers_share_the_port(model):
    s = Server(model / "model", "--workers", "2")
    try:
        pids = set()
        for _ in range(20):
            status, meta = request(s.port, "GET", "/metadata")
            assert status == 200
            pids.add(meta["server"]["pid"])
            assert predict(s.port, [[1, 2, 3, 4]])[0] == 200
        text = s.metrics()
        # multiprocess metrics: whichever worker answers reports the sum over both
        assert sample(text, "hpctrain_requests_total", '{code="200",path="/predict"}') == 20
    finally:
        assert s.stop() == 0


def test_bad_server_options_are_one_line_errors(model, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(model / "model"), "--port", str(port)]) == 2
        assert "Address already in use" in capsys.readouterr().err
    assert main(["serve", str(model / "model"), "--max-batch", "0"]) == 2
    assert "--max-batch 0: expected >= 1" in capsys.readouterr().err
    assert main(["serve", str(model / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
