"""`charrnn serve` as its users meet it: a real server process on a free localhost port, called with the official
`openai` package and with raw HTTP; batching, limits, bad requests, clients that vanish, and a clean stop."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import cli

openai = pytest.importorskip("openai", reason="the test extra (openai) is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("starlette", reason="the serve extra is not installed")

EXACT = ["--device", "cpu", "--precision", "fp32"]  # numbers compared with `charrnn sample`: the same path


class Server:
    """`python -m charrnn serve ARGS --port 0` in cwd; its stderr lines collected as they come."""

    def __init__(self, *args, cwd: Path):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "charrnn", "serve", "--port", "0", *EXACT, *map(str, args)],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.started = threading.Event()
        threading.Thread(target=self.read, daemon=True).start()
        assert self.started.wait(90), f"the server did not start: {self.lines}"
        self.port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", self.lines[0])[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def read(self) -> None:
        for text in self.proc.stderr:
            self.lines.append(text.rstrip("\n"))
            if text.startswith("serving "):
                self.started.set()
        self.started.set()

    def client(self, **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="none", **{"max_retries": 0, "timeout": 60, **kw})

    def post(self, body, path: str = "/v1/completions", kind: str = "application/json") -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("POST", path, body=body if isinstance(body, bytes | str) else json.dumps(body),
                     headers={"content-type": kind} if kind else {})
        response = conn.getresponse()
        data = response.read().decode()
        conn.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def get(self, path: str) -> dict:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())

    def seen(self, pattern: str, count: int = 1) -> list[str]:
        """The stderr lines that match pattern, once there are count of them (a request's line comes just after
        its answer)."""
        deadline = time.monotonic() + 30
        while True:
            found = [line for line in self.lines if re.fullmatch(pattern, line)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def stop(self, sig: int | None = signal.SIGTERM) -> int:
        """Its exit status, once sig (None: none, one was sent already) has stopped it."""
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(origin: Path):
    """The origin's tiny run served as `tiny`, and a copy of it as `twin`, with small limits."""
    shutil.copytree(origin / "checkpoints" / "tiny", origin / "copy" / "tiny")
    s = Server("checkpoints/tiny", "twin=copy/tiny", "--max-n", "4", "--max-chars", "20000", "--max-prompt", "300",
               "--max-body", "4000", cwd=origin)
    yield s
    assert s.stop() == 143


def sampled(origin: Path, *args) -> str:
    """What `charrnn sample` writes for the origin's tiny run with these options."""
    result = cli("sample", origin / "checkpoints" / "tiny", *EXACT, *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_plain_and_streamed_completions_through_the_openai_client(server):
    client = server.client()
    plain = client.completions.create(model="tiny", prompt="ab", max_tokens=60, seed=7, temperature=0.8)
    assert plain.object == "text_completion" and plain.model == "tiny" and plain.id.startswith("cmpl-")
    (choice,) = plain.choices
    assert len(choice.text) == 60 and choice.finish_reason == "length" and choice.index == 0
    assert (plain.usage.prompt_tokens, plain.usage.completion_tokens, plain.usage.total_tokens) == (2, 60, 62)
    chunks = list(client.completions.create(model="tiny", prompt="ab", max_tokens=60, seed=7, temperature=0.8,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == choice.text  # same seed, same text
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 60
    assert [m.id for m in client.models.list()] == ["tiny", "twin"]


@pytest.mark.parametrize("temperature, top_p, top_k", [(0.7, 1.0, 0), (1.0, 0.8, 0), (0.9, 1.0, 3), (0, 1.0, 0)])
def test_a_seeded_request_writes_what_charrnn_sample_writes(server, origin, temperature, top_p, top_k):
    client = server.client()
    texts = [client.completions.create(model="tiny", prompt="ab ", max_tokens=80, seed=11, temperature=temperature,
                                       top_p=top_p, extra_body={"top_k": top_k}).choices[0].text for _ in range(2)]
    assert texts[0] == texts[1]  # repeatable
    expected = sampled(origin, "--seed", "11", "--temp", temperature, "--top-p", top_p, "--top-k", top_k, "-n", "80",
                       "--prime", "ab ")
    assert "ab " + texts[0] == expected


def test_n_choices_equal_num_samples_and_stop_strings_are_left_out(server, origin):
    client = server.client()
    answer = client.completions.create(model="tiny", prompt="b", n=3, max_tokens=40, seed=5, stop="k")
    expected = sampled(origin, "--seed", "5", "--num-samples", "3", "-n", "40", "--prime", "b", "--stop", "k",
                       "--separator", "|").split("|")
    assert [c.index for c in answer.choices] == [0, 1, 2]
    for choice, sample in zip(answer.choices, expected, strict=True):
        assert "k" not in choice.text
        assert "b" + choice.text + ("k" if choice.finish_reason == "stop" else "") == sample
    assert {c.finish_reason for c in answer.choices} <= {"stop", "length"}
    assert answer.usage.completion_tokens == sum(len(s) - 1 for s in expected)  # the stop strings were made too


def test_streamed_stop_strings_are_held_back_and_left_out(server):
    client = server.client()
    for stop in (["a b"], ["\n", "ij"], ["cc", "c d"]):
        plain = client.completions.create(model="tiny", prompt="a", n=4, max_tokens=200, seed=3, stop=stop)
        pieces = {i: "" for i in range(4)}
        for chunk in client.completions.create(model="tiny", prompt="a", n=4, max_tokens=200, seed=3, stop=stop,
                                               stream=True):
            for c in chunk.choices:
                pieces[c.index] += c.text
        assert [pieces[i] for i in range(4)] == [c.text for c in plain.choices]
        assert not any(s in c.text for s in stop for c in plain.choices)


def test_several_prompts_echo_and_a_second_model(server):
    client = server.client()
    answer = client.completions.create(model="twin", prompt=["ab", "ha"], n=2, max_tokens=10, seed=1, echo=True)
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text[:2] for c in answer.choices] == ["ab", "ab", "ha", "ha"]
    assert all(len(c.text) == 12 for c in answer.choices)
    assert answer.usage.prompt_tokens == 4 and answer.usage.completion_tokens == 40


def test_concurrent_clients_are_sampled_as_one_batch(server):
    """Eight streaming clients at once share the steps: more characters per step than one client gets (the
    throughput itself is bench/serve.py's to measure, never a timed assertion here)."""
    before = server.get("/health")["models"]["tiny"]
    results, start = [], threading.Barrier(8)

    def one(i):
        client = server.client()
        start.wait()
        stream = client.completions.create(model="tiny", prompt=str(i % 3), max_tokens=4000, stream=True)
        results.append(sum(len(c.choices[0].text) for c in stream if c.choices))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [4000] * 8
    after = server.get("/health")["models"]["tiny"]
    chars, steps = after["chars"] - before["chars"], after["steps"] - before["steps"]
    assert chars == 8 * 4000 and chars / steps > 2, (chars, steps)
    assert after["most_rows"] >= 4
    lines = server.seen(r"POST /v1/completions 200 tiny 4,000 chars batch \d+ .*", 8)
    assert max(int(re.search(r" batch (\d+) ", line)[1]) for line in lines) >= 4, lines


BAD = [  # (body, status, the field the error names)
    ({"model": "nope", "prompt": "a"}, 404, "model"),
    ({"model": 3, "prompt": "a"}, 400, "model"),
    ({"model": "tiny", "prompt": 5}, 400, "prompt"),
    ({"model": "tiny", "prompt": [1, 2]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "a" * 301}, 400, "prompt"),
    ({"model": "tiny", "max_tokens": -1}, 400, "max_tokens"),
    ({"model": "tiny", "max_tokens": 10**12}, 400, "max_tokens"),
    ({"model": "tiny", "max_tokens": 20001}, 400, "max_tokens"),
    ({"model": "tiny", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "tiny", "max_tokens": 2.5}, 400, "max_tokens"),
    ({"model": "tiny", "n": 3, "max_tokens": 7000}, 400, "max_tokens"),
    ({"model": "tiny", "temperature": -0.5}, 400, "temperature"),
    ({"model": "tiny", "temperature": 2.5}, 400, "temperature"),
    ({"model": "tiny", "temperature": "hot"}, 400, "temperature"),
    ('{"model": "tiny", "temperature": 1e400}', 400, "temperature"),
    ({"model": "tiny", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "top_p": 1.5}, 400, "top_p"),
    ({"model": "tiny", "top_k": -1}, 400, "top_k"),
    ({"model": "tiny", "n": 0}, 400, "n"),
    ({"model": "tiny", "n": 5}, 400, "n"),
    ({"model": "tiny", "n": True}, 400, "n"),
    ({"model": "tiny", "prompt": ["a", "b", "c"], "n": 2}, 400, "n"),
    ({"model": "tiny", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "tiny", "stop": ""}, 400, "stop"),
    ({"model": "tiny", "seed": -1}, 400, "seed"),
    ({"model": "tiny", "seed": 2**64}, 400, "seed"),
    ({"model": "tiny", "stream": "yes"}, 400, "stream"),
    ({"model": "tiny", "echo": 1}, 400, "echo"),
    ({"model": "tiny", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"model": "tiny", "temprature": 0.5}, 400, "temprature"),
    ({"model": "tiny", "logprobs": 3}, 400, "logprobs"),
    ({"model": "tiny", "best_of": 3}, 400, "best_of"),
    ('{"model": "tiny", "prompt": ', 400, None),
    ('{"model": "tiny", "temperature": NaN}', 400, None),
    ('[1, 2]', 400, None),
    (b'{"prompt": "\xff"}', 400, None),
    ("[" * 3000, 400, None),
    ("[" * 100_000, 413, None),
    ('{"model": "tiny", "prompt": "' + "x" * 5000 + '"}', 413, None),
]


@pytest.mark.parametrize("body, status, param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_a_4xx_json_error_naming_the_field(server, body, status, param):
    code, answer = server.post(body)
    assert code == status, answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    if param:
        assert param in error["message"]


def test_a_timeout_of_zero_is_refused():
    result = cli("serve", "--timeout", "0")
    assert result.exit_code == 2 and "--timeout must be more than 0 seconds" in result.stderr


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_sent_as_json_is_refused(server, kind):
    """Another site's page can POST text/plain or a form without asking first (no CORS preflight): refused."""
    code, answer = server.post({"model": "tiny", "prompt": "a"}, kind=kind)
    assert code == 415 and answer["error"]["code"] == "unsupported_media_type"
    assert "content-type: application/json" in answer["error"]["message"]


def test_the_client_sees_the_message_and_the_server_goes_on(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError, match="temperature must be from 0 to 2"):
        client.completions.create(model="tiny", prompt="a", temperature=3)
    with pytest.raises(openai.NotFoundError, match="'nope' is not served here"):
        client.completions.create(model="nope", prompt="a")
    assert server.get("/health")["status"] == "ok"
    assert server.get("/nowhere")["error"]["code"] == "not_found"


def test_one_line_per_request_on_stderr(server):
    server.client().completions.create(model="tiny", prompt="a", max_tokens=33)
    server.get("/health?x=1")
    assert server.seen(r"POST /v1/completions 200 tiny 33 chars batch \d+ [\d.]+ m?s")
    assert server.seen(r"GET /health 200 [\d.]+ m?s")
    assert not [line for line in server.lines if "Traceback" in line or "INFO" in line]


def test_a_vanished_or_slow_client_does_not_hold_up_others(server):
    body = json.dumps({"model": "tiny", "prompt": "a", "max_tokens": 20000, "stream": True}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(request)  # and never reads
    gone = socket.create_connection(("127.0.0.1", server.port))
    gone.sendall(request)
    received = b""
    while b"data: " not in received:
        received += gone.recv(4096)
    gone.close()
    texts = [server.client().completions.create(model="tiny", prompt="a", max_tokens=50).choices[0].text
             for _ in range(3)]
    assert [len(t) for t in texts] == [50] * 3
    assert server.seen(r"POST /v1/completions 200 tiny [\d,]+ chars? batch \d+ .* client gone")
    slow.close()


def test_limits_on_requests_in_flight_and_their_time(origin):
    s = Server("checkpoints/tiny", "--max-requests", "1", "--timeout", "1.5", "--max-chars", "1000000", cwd=origin)
    try:
        client = s.client()
        stream = client.completions.create(model="tiny", prompt="a", max_tokens=1000000, stream=True)
        next(iter(stream))
        with pytest.raises(openai.RateLimitError, match="--max-requests"):
            client.completions.create(model="tiny", prompt="a", max_tokens=5)
        with pytest.raises(openai.APIError, match="--timeout"):
            for _ in stream:
                pass
        code, answer = s.post({"model": "tiny", "max_tokens": 1000000})
        assert code == 408 and answer["error"]["code"] == "timeout"
        with pytest.raises(openai.APIStatusError, match="--timeout"):  # and the client does not send it again
            s.client(max_retries=2).completions.create(model="tiny", prompt="a", max_tokens=1000000)
        s.get("/health")
        assert s.seen(r"GET /health 200 .*") and len(s.seen(r"POST /v1/completions 408 .*")) == 2
    finally:
        assert s.stop(signal.SIGINT) == 130


def test_sigterm_lets_requests_in_flight_finish_and_exits_143(origin):
    s = Server("checkpoints/tiny", "--grace", "60", cwd=origin)
    stream = s.client().completions.create(model="tiny", prompt="a", max_tokens=3000, stream=True)
    text = next(iter(stream)).choices[0].text
    s.proc.send_signal(signal.SIGTERM)
    text += "".join(c.choices[0].text for c in stream)
    assert len(text) == 3000
    assert s.stop(signal.SIGTERM) == 143  # a second SIGTERM while it winds up changes nothing
    assert s.seen(r"POST /v1/completions 200 tiny 3,000 chars .*")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.port), timeout=5)


def test_ctrl_c_cuts_requests_past_the_grace_with_a_clear_end_and_exits_130(origin):
    s = Server("checkpoints/tiny", "--grace", "0", "--max-chars", "10000000", cwd=origin)
    stream = s.client().completions.create(model="tiny", prompt="a", max_tokens=10000000, stream=True)
    next(iter(stream))
    s.proc.send_signal(signal.SIGINT)
    with pytest.raises(openai.APIError, match="shutting down"):
        for _ in stream:
            pass
    assert s.stop(None) == 130
    assert s.seen(r"POST /v1/completions 200 tiny [\d,]+ chars? .* shutdown")


def test_serve_refuses_two_models_of_one_name_and_a_taken_port(origin, in_tmp):
    shutil.copytree(origin / "checkpoints", in_tmp / "checkpoints")
    shutil.copytree(origin / "checkpoints" / "tiny", in_tmp / "other" / "tiny")
    result = cli("serve", "tiny", "other/tiny")
    assert result.exit_code == 2 and "two models are named 'tiny'" in result.stderr
    assert "NAME=RUN_OR_FILE" in result.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = cli("serve", "--port", taken.getsockname()[1], *EXACT)
    assert result.exit_code == 1 and "cannot listen on 127.0.0.1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_stop_strings_wait_while_they_may_begin_and_chunks_are_plain_json():
    from charrnn.generation.completion import Completion, Reply, event
    from charrnn.generation.job import Job, holding

    assert [holding(t, ("abc", "bd"), 3) for t in ("xa", "xab", "xb", "xx", "ab")] == [1, 2, 1, 0, 2]
    job = Job(Completion(model="m", prompts=("",), max_tokens=9, stops=("abc",)), timeout=60)
    went_on = [job.take(0, ch) for ch in "xababc"]
    assert went_on == [True] * 5 + [False]
    assert "".join(e[1] for e in job.events) == "xab" and job.events[-1][2] == "stop" and job.generated == 6
    reply = Reply(Completion(model='a "model"', prompts=("p",)))
    for text, finish in (("h", None), ('"\n\u2028é😀', "stop"), ("", "length")):
        choice = {"index": 2, "text": text, "logprobs": None, "finish_reason": finish}
        assert reply.chunk(2, text, finish) == event(reply.head(choices=[choice]))


def test_serve_is_a_command_and_its_help_needs_no_torch():
    code = ("import sys\nfrom charrnn.cli import app\nfor args in (['--help'], ['serve', '--help']):\n    try:\n"
            "        app(args)\n    except SystemExit:\n        pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert " serve " in proc.stdout and "--max-requests" in proc.stdout and proc.stdout.strip().endswith("NO")


def test_without_the_extra_one_line_says_how_to_install_it(origin):
    code = ("import sys\nsys.modules['uvicorn'] = None\nfrom charrnn.cli import app\napp(['serve'], "
            "prog_name='charrnn')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=origin, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: charrnn serve needs uvicorn: pip install 'charrnn[serve]'"
