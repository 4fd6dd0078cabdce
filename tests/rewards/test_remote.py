"""The remote scorer against a real HTTP server on 127.0.0.1: batching, concurrency limit, retries with
backoff, timeouts, and errors naming the URL and the rows."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lightning_rlhf.rewards import RemoteScorer, RewardError, compute_rewards, resolve_reward_functions


class ScoringServer(ThreadingHTTPServer):
    """Scores a completion by its length; the path picks a misbehaviour. Records what it saw."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.failures_before_success = 2

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: ScoringServer

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _answer(self, status: int, payload: object) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._done()  # before the reply: the client may send its next request as soon as it has read it
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:  # the client gave up (the timeout test)
            pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server, self._counted_out = self.server, False
        with server.lock:
            server.requests.append({"path": self.path, **data})
            server.attempts[self.path] = server.attempts.get(self.path, 0) + 1
            attempt = server.attempts[self.path]
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
        try:
            time.sleep(0.2 if self.path == "/score" else 0.02)  # /score: long enough for requests to overlap
            rewards = [float(len(c)) for c in data["completions"]]
            if self.path == "/score":
                self._answer(200, {"rewards": rewards})
            elif self.path == "/list":
                self._answer(200, [None if "none" in c else float(a == c) for c, a in
                                   zip(data["completions"], data["answer"])])
            elif self.path == "/flaky" and attempt <= server.failures_before_success:
                self._answer(503, {"error": "warming up"})
            elif self.path == "/flaky":
                self._answer(200, {"rewards": rewards})
            elif self.path == "/error":
                self._answer(500, b"boom: the checker crashed")
            elif self.path == "/bad_request":
                self._answer(400, b"missing field")
            elif self.path == "/slow":
                time.sleep(1.0)
                self._answer(200, {"rewards": rewards})
            elif self.path == "/short":
                self._answer(200, {"rewards": rewards[:-1]})
            elif self.path == "/nan":
                self._answer(200, {"rewards": [float("nan")] + rewards[1:]})
            else:
                self._answer(200, b"<html>not json</html>")
        finally:
            self._done()

    def _done(self) -> None:
        """Count this request out of flight, once."""
        if not getattr(self, "_counted_out", False):
            self._counted_out = True
            with self.server.lock:
                self.server.in_flight -= 1


@pytest.fixture
def server():
    httpd = ScoringServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def run(scorer, completions, **columns):
    functions, weights = resolve_reward_functions([scorer])
    prompts = [f"prompt {i}" for i in range(len(completions))]
    return compute_rewards(functions, weights, prompts, completions, columns)


def test_batches_are_scored_in_order_with_columns_and_bounded_concurrency(server):
    completions = ["x" * i for i in range(10)]
    scorer = RemoteScorer(server.url + "/score", batch_size=3, max_concurrency=2)
    got = run(scorer, completions, answer=[str(i) for i in range(10)])
    assert got.total.tolist() == [float(i) for i in range(10)]
    assert got.names == ("remote",)
    batches = sorted(server.requests, key=lambda r: r["answer"][0])
    assert [len(r["prompts"]) for r in batches] == [3, 3, 3, 1]
    assert batches[1]["answer"] == ["3", "4", "5"] and batches[1]["prompts"][0] == "prompt 3"
    assert server.max_in_flight == 2  # overlapping, but never more than the limit


def test_a_bare_list_with_null_is_accepted(server):
    got = run(RemoteScorer(server.url + "/list"), ["7", "none", "3"], answer=["7", "1", "4"])
    assert got.total[0].item() == 1.0 and math.isnan(got.total[1]) and got.total[2].item() == 0.0
    assert got.num_none == (1,)


def test_retries_with_backoff_until_the_server_recovers(server):
    start = time.perf_counter()
    got = run(RemoteScorer(server.url + "/flaky", max_retries=3, backoff=0.1), ["ab", "c"])
    assert got.total.tolist() == [2.0, 1.0]
    assert server.attempts["/flaky"] == 3
    assert time.perf_counter() - start >= 0.1 + 0.2  # waited backoff, then twice it, before the third attempt


def test_a_server_error_after_retries_names_url_rows_status_and_body(server):
    url = server.url + "/error"
    with pytest.raises(RewardError, match=rf"reward url {url} failed for rows 0-1 after 3 attempt\(s\): HTTP 500: "
                                          r"'boom: the checker crashed'"):
        run(RemoteScorer(url, max_retries=2, backoff=0.0), ["a", "b"])
    assert server.attempts["/error"] == 3


def test_a_client_error_is_not_retried(server):
    with pytest.raises(RewardError, match="after 1 attempt.*HTTP 400: 'missing field'"):
        run(RemoteScorer(server.url + "/bad_request", max_retries=3, backoff=0.0), ["a"])
    assert server.attempts["/bad_request"] == 1


def test_a_timeout_is_retried_then_reported(server):
    with pytest.raises(RewardError, match=r"/slow failed for rows 0-0 after 2 attempt\(s\): .*timed out"):
        run(RemoteScorer(server.url + "/slow", timeout=0.2, max_retries=1, backoff=0.0), ["a"])


def test_a_refused_connection_is_reported(server):
    url = server.url + "/score"
    server.shutdown()
    server.server_close()
    with pytest.raises(RewardError, match=rf"{url} failed for rows 0-0 after 2 attempt\(s\): URLError"):
        run(RemoteScorer(url, max_retries=1, backoff=0.0), ["a"])


@pytest.mark.parametrize("path,message", [
    ("/short", r"answered .* for rows 0-1; expected .* 2 entries"),
    ("/nan", r"returned nan for row 0 \(prompt 'prompt 0'\)"),
    ("/html", r"answered non-JSON for rows 0-1: '<html>not json</html>'"),
])
def test_bad_answers_name_the_url_and_rows(server, path, message):
    url = server.url + path
    with pytest.raises(RewardError, match=message) as info:
        run(RemoteScorer(url, batch_size=2, backoff=0.0), ["a", "bb", "c", "dd"])
    assert url in str(info.value)


def test_columns_that_are_not_json_and_bad_settings_are_named(server):
    with pytest.raises(RewardError, match=r"rows 0-0 cannot be sent as JSON"):
        run(RemoteScorer(server.url + "/score"), ["a"], answer=[object()])
    with pytest.raises(ValueError, match="must start with http"):
        RemoteScorer("ftp://127.0.0.1/score")
    with pytest.raises(ValueError, match="max_concurrency >= 1"):
        RemoteScorer(server.url, max_concurrency=0)
