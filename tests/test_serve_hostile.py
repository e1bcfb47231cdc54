"""`maemi serve` under hostile input (issue 26): real `maemi serve` processes on loopback, real files made here.

Every case gets a 4xx whose message says what is wrong (never a 500), and /health answers within a second
throughout (a watcher polls it during every test). Two servers on the tiny run of test_assistant:
- `guarded`: an API key, the default decoded-size budget, a small queue;
- `open_`: no key (so the Host check is on), the budget lifted (so the decoder itself meets a 1 TB image), a short
  timeout and one decoding thread (so that waiting work can be seen to be dropped).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from maemi.serve.decoding import DecodePool
from serve_process import maemi_serve
from test_assistant import BRIGHT_Q, invoke, tiny  # noqa: F401  (a fixture: the tiny trained run)
from tiny_text_models import one_thread  # noqa: F401

KEY = "hostile-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ONE_IMAGE = ("/v1/caption", "/v1/classify", "/v1/measure", "/v1/preview")
HEALTH_WITHIN_S = 1.0
OPEN_TIMEOUT_S = 1.0


def tiff_declaring(width: int, height: int, samples: int, bits: int = 8) -> bytes:
    """A little-endian TIFF whose header declares width x height pixels of `samples` samples and holds no pixel data:
    a few KB that a decoder would expand to width x height x samples x bits/8 bytes."""
    rows = max(1, min(height, (2**32 - 1) // (width * samples * bits // 8)))  # strips under 4 GiB (LONG counts)
    strips = -(-height // rows)
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, samples, [bits] * samples), (259, 3, 1, 1),
               (262, 3, 1, 1), (273, 4, strips, [0] * strips), (277, 3, 1, samples), (278, 4, 1, rows),
               (279, 4, strips, [width * rows * samples * bits // 8] * strips), (284, 3, 1, 1),
               (338, 3, samples - 1, [0] * (samples - 1))]  # tag, type (3 SHORT, 4 LONG), count, value(s)
    entries = [e for e in entries if e[2] > 0]
    arrays_at = 8 + 2 + 12 * len(entries) + 4  # header, entry count, entries, next-IFD offset
    fields, arrays = bytearray(), bytearray()
    for tag, kind, count, value in entries:
        fmt = "<" + ("H" if kind == 3 else "I") * count
        values = value if isinstance(value, list) else [value]
        if struct.calcsize(fmt) <= 4:
            field = struct.pack(fmt, *values).ljust(4, b"\0")
        else:
            field = struct.pack("<I", arrays_at + len(arrays))
            arrays += struct.pack(fmt, *values)
        fields += struct.pack("<HHI", tag, kind, count) + field
    return b"II*\x00" + struct.pack("<IH", 8, len(entries)) + bytes(fields) + bytes(4) + bytes(arrays)


def png(width: int, height: int, mode: str = "L") -> bytes:
    """A legal PNG of one grey level: megapixels in a few hundred KB."""
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def chat(url: str, text: str, image: bytes, headers=AUTH, **options) -> httpx.Response:
    messages = [{"role": "user", "content": [{"type": "text", "text": text},
                                             {"type": "image_url", "image_url": {"url": data_url(image)}}]}]
    return httpx.post(url + "/v1/chat/completions", json={"messages": messages, **options}, headers=headers,
                      timeout=60)


def post(url: str, path: str, files, headers=AUTH, **fields) -> httpx.Response:
    return httpx.post(url + path, files=files, data=fields, headers=headers, timeout=60)


def upload_files() -> list[Path]:
    """The server's temporary upload files (uploads.py), wherever it puts them."""
    return [*Path(tempfile.gettempdir()).glob("maemi-upload-*"), *Path("/dev/shm").glob("maemi-upload-*")]


def served_items(url: str) -> int:
    """Batch items the model has run."""
    return httpx.get(url + "/health", timeout=5).json()["served"]["requests"]


def openai_error(r: httpx.Response) -> str:
    """The message of an OpenAI error object, checking its shape."""
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "code"} and error["code"] == r.status_code, r.text
    return error["message"]


class HealthWatch:
    """Polls /health in a thread; `worst` is the slowest answer (a failure counts as forever) since `reset`."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.worst = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.wait(0.1):
                for url in list(self.urls):
                    started = time.monotonic()
                    try:
                        ok = client.get(url + "/health").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    self.worst = max(self.worst, time.monotonic() - started if ok else float("inf"))

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.fixture(scope="module")
def watch():
    with HealthWatch() as running:
        yield running


@pytest.fixture(scope="module")
def guarded(tiny, tmp_path_factory, watch):
    log = tmp_path_factory.mktemp("guarded") / "serve.log"
    with maemi_serve(tiny["run"], log, "--api-key-env", "MAEMI_HOSTILE_KEY", "--max-queue", "8", "--batch-size", "4",
                     env={"MAEMI_HOSTILE_KEY": KEY}) as url:
        watch.urls.append(url)
        yield url
        watch.urls.remove(url)


@pytest.fixture(scope="module")
def open_(tiny, tmp_path_factory, watch):
    log = tmp_path_factory.mktemp("open") / "serve.log"
    with maemi_serve(tiny["run"], log, "--max-image-megapixels", "1000000", "--timeout", str(OPEN_TIMEOUT_S),
                     "--max-decodes", "1") as url:
        watch.urls.append(url)
        yield url
        watch.urls.remove(url)
    # stopped while still decoding what a timed-out request sent: the decode ends and removes its temporary file
    assert not upload_files()


@pytest.fixture(autouse=True)
def health_stays_responsive(watch):
    watch.worst = 0.0
    yield
    time.sleep(0.3)  # one more poll after the test's last request
    assert watch.worst < HEALTH_WITHIN_S, f"/health took {watch.worst:.2f} s during the test"


@pytest.fixture(scope="module")
def small(tiny) -> bytes:
    return sorted(tiny["images"].rglob("*.png"))[0].read_bytes()


# ------------------------------------------------------------------------------------------------ image sizes


def test_images_over_the_budget_are_refused_from_their_header(guarded):
    cases = [
        (tiff_declaring(10_000, 10_000, 10_000), "deep.tif", "10000x10000 = 100.0 megapixels is over the server's "
                                                             "limit of 40 megapixels"),
        (tiff_declaring(2_000, 2_000, 10_000), "wide.tif", "2000x2000 pixels x 10000 sample(s) of 8 bits"),
        (tiff_declaring(6_000, 6_000, 4, 64), "rgba64.tif", "6000x6000 pixels x 4 sample(s) of 64 bits"),
        (png(10_000, 10_000), "huge.png", "10000x10000 = 100.0 megapixels"),
    ]
    before = served_items(guarded)
    for data, name, words in cases:
        assert len(data) < 400_000  # small files: their size says nothing of their pixels
        for path in ONE_IMAGE + ("/v1/ask",):
            r = post(guarded, path, {"image": (name, data)}, question=BRIGHT_Q)
            assert r.status_code == 413 and words in r.json()["detail"] and repr(name) in r.json()["detail"], (
                path, r.status_code, r.text)
        r = chat(guarded, BRIGHT_Q, data)
        assert r.status_code == 413 and words in openai_error(r), r.text
    assert served_items(guarded) == before
    # within the budget, the same kind of image is served
    r = post(guarded, "/v1/classify", {"image": ("fine.png", png(2_000, 2_000))})
    assert r.status_code == 200, r.text


def test_running_out_of_memory_while_decoding_is_a_413(open_):
    # The budget is lifted on this server: the loader itself meets a 42 KB TIFF that declares a 931 GiB image.
    r = post(open_, "/v1/classify", {"image": ("deep.tif", tiff_declaring(10_000, 10_000, 10_000))})
    assert r.status_code == 413 and "'deep.tif': not enough free memory" in r.json()["detail"], r.text


def test_the_decoding_pool_holds_no_more_memory_than_its_budget():
    running: set[str] = set()
    together: list[set[str]] = []  # what ran at the same time, seen as each decode starts
    lock = threading.Lock()

    def decode(name: str) -> str:
        with lock:
            running.add(name)
            together.append(set(running))
        time.sleep(0.1)
        with lock:
            running.discard(name)
        return name

    async def scenario():
        pool = DecodePool(max_decodes=4, memory_bytes=10)  # threads to spare: memory is the limit
        runs = [asyncio.ensure_future(pool.run(cost, decode, name))
                for cost, name in ((6, "a"), (6, "b"), (3, "c"), (30, "huge"), (3, "d"), (1, "e"))]
        await asyncio.sleep(0.05)
        runs[2].cancel()  # waiting: dropped, never run
        done = await asyncio.gather(*runs, return_exceptions=True)
        pool.close()
        return done, pool.free

    done, free = asyncio.run(scenario())
    assert done[:2] == ["a", "b"] and isinstance(done[2], asyncio.CancelledError) and done[3:] == ["huge", "d", "e"]
    # b waits for a (6 + 6 > 10); huge is clamped to the whole budget and runs alone; d and e wait their turn behind
    # it (no overtaking), then run together
    assert together == [{"a"}, {"b"}, {"huge"}, {"d"}, {"d", "e"}] and free == 10


def test_screen_gives_a_hostile_file_an_error_row_and_goes_on(tiny, small, tmp_path):
    # `maemi screen` decodes files it is given, not uploads, but one 42 KB TIFF declaring a 931 GiB image would stop
    # it (MemoryError) or the machine: it is refused from its header, with the loader's 100 MP as the budget.
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.png").write_bytes(small)
    (folder / "deep.tif").write_bytes(tiff_declaring(10_000, 10_000, 10_000))
    out = tmp_path / "rows.jsonl"
    result = invoke("screen", tiny["run"], folder, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = {row["path"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["a.png"]["top1"] and not rows["a.png"]["error"]
    error = rows["deep.tif"]["error"]
    assert rows["deep.tif"]["top1"] is None and error.startswith("decoding it would take about ")
    assert "GiB of memory (10000x10000 pixels x 10000 sample(s) of 8 bits), over the" in error


# ------------------------------------------------------------------------------------------------ requests


def test_one_image_endpoints_refuse_several(guarded, small):
    for path in ONE_IMAGE:
        r = post(guarded, path, [("image", (f"{i}.png", small)) for i in range(50)])
        assert r.status_code == 400 and f"{path} takes one image, got 50" in r.json()["detail"], r.text


def test_the_key_is_checked_before_the_body(guarded):
    broken = b'{"messages": [{"role": "user", "content": '
    r = httpx.post(guarded + "/v1/chat/completions", content=broken, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and "API key" in openai_error(r)
    r = httpx.post(guarded + "/v1/chat/completions", content=broken, headers={**AUTH,
                                                                             "Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON" in openai_error(r)
    r = httpx.post(guarded + "/v1/classify", content=b"--x\r\nbroken", headers={
        "Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 401 and "API key" in r.json()["detail"]


def test_chat_fields_are_validated_at_the_edge(guarded, small):
    for schema in ("a string", ["a", "list"]):
        r = chat(guarded, "1. [a] What is it?", small, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert r.status_code == 422 and "response_format.json_schema.schema" in openai_error(r), r.text
    r = chat(guarded, "1. [a] What is it?", small, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": ["a"]}}})
    assert r.status_code == 400 and "micrograph_answers schema" in openai_error(r)
    r = chat(guarded, BRIGHT_Q, small, response_format={"type": "xml"})
    assert r.status_code == 422 and "response_format.type" in openai_error(r)
    r = httpx.post(guarded + "/v1/chat/completions", json={"messages": []}, headers=AUTH)
    assert r.status_code == 422 and "messages" in openai_error(r)
    r = httpx.get(guarded + "/v1/chat/nothing-here", headers=AUTH)
    assert r.status_code == 404 and openai_error(r)


def test_long_questions_are_refused_before_the_model_sees_them(guarded, small):
    before = served_items(guarded)
    started = time.monotonic()
    r = chat(guarded, "Describe it. " * 800_000, small)  # 10 MB of question
    assert r.status_code == 413 and "characters long" in openai_error(r) and "max_prompt_len" in openai_error(r)
    r = post(guarded, "/v1/ask", {"image": ("a.png", small)}, question="Describe it. " * 20_000)
    assert r.status_code == 413 and "characters long" in r.json()["detail"], r.text
    assert time.monotonic() - started < 5
    many = "\n".join(f"{i}. [q{i}] {BRIGHT_Q}" for i in range(1, 1001))
    r = chat(guarded, many, small, response_format={"type": "json_object"})
    assert r.status_code == 400 and "1000 numbered questions" in openai_error(r) and "at most 64" in openai_error(r)
    assert served_items(guarded) == before


def test_a_json_request_that_fills_the_queue_runs_no_more_than_one_batch(guarded, small):
    # 30 questions into a queue of 8: the request gets 503 at once, and its queued items are dropped, not run;
    # only a batch the model had already taken (at most --batch-size 4) may run.
    before = served_items(guarded)
    questions = "\n".join(f"{i}. [q{i}] {BRIGHT_Q}" for i in range(1, 31))
    schema = {"type": "object", "required": [f"q{i}" for i in range(1, 31)],
              "properties": {f"q{i}": {"type": "object", "properties": {"long": {}, "short": {}}} for i in range(1, 31)}}
    r = chat(guarded, questions, small, response_format={"type": "json_schema", "json_schema": {
        "name": "micrograph_answers", "schema": schema}})
    assert r.status_code == 503 and "busy" in openai_error(r)
    time.sleep(1.0)
    assert served_items(guarded) - before <= 4


def test_a_client_that_leaves_gets_no_work_done(guarded, small):
    # Both decoding threads busy measuring 12-megapixel images; meanwhile a client sends a classify request and
    # hangs up before an answer. Its image waits for a thread as bytes, and is dropped when the client leaves: once
    # the measurements end, the model has run nothing.
    before = served_items(guarded)
    image, measured = png(3_464, 3_464), []
    busy = [threading.Thread(target=lambda: measured.append(post(guarded, "/v1/measure", {"image": ("big.png", image)})))
            for _ in range(2)]
    for thread in busy:
        thread.start()
    time.sleep(0.5)
    request = httpx.Request("POST", guarded + "/v1/classify", files={"image": ("a.png", small)},
                            headers={**AUTH, "Host": guarded.split("//")[1]})
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    with socket.create_connection(("127.0.0.1", int(guarded.rsplit(":", 1)[1]))) as client:
        client.sendall(f"POST /v1/classify HTTP/1.1\r\n{head}\r\n".encode() + request.read())
        time.sleep(0.5)
    for thread in busy:
        thread.join()
    assert [r.status_code for r in measured] == [200, 200]
    time.sleep(0.5)
    assert served_items(guarded) == before


# ------------------------------------------------------------------------------------------------ host, deadline


def test_without_a_key_other_hosts_are_refused(open_, small):
    port = open_.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        r = httpx.get(open_ + "/health", headers={"Host": host})
        assert r.status_code == 421 and "does not answer to the host" in r.json()["detail"], (host, r.text)
        r = chat(open_, BRIGHT_Q, small, headers={"Host": host})
        assert r.status_code == 421 and "--allowed-hosts" in openai_error(r)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(open_ + "/health", headers={"Host": host}).status_code == 200


def test_the_timeout_covers_decoding_and_drops_waiting_work(open_, small):
    # One decoding thread, busy past the timeout measuring a 25-megapixel image: that request gets 504 at the
    # deadline, not when the measurement ends; the classify requests that wait for the thread meanwhile get 504 too
    # (so the thread was still busy), and their images are never decoded nor run by the model.
    big = png(5_000, 5_000)

    async def scenario() -> tuple[float, httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=open_, timeout=60) as client:
            async def measure_big() -> tuple[float, httpx.Response]:
                started = time.monotonic()
                r = await client.post("/v1/measure", files={"image": ("big.png", big)})
                return time.monotonic() - started, r

            big_request = asyncio.ensure_future(measure_big())
            await asyncio.sleep(0.3)
            waiting = await asyncio.gather(*(client.post("/v1/classify", files={"image": ("a.png", small)})
                                             for _ in range(3)))
            return *(await big_request), waiting

    before = served_items(open_)
    elapsed, measured, waiting = asyncio.run(scenario())
    assert measured.status_code == 504 and "--timeout" in measured.json()["detail"], measured.text
    assert elapsed < OPEN_TIMEOUT_S + 1
    for r in waiting:
        assert r.status_code == 504 and "--timeout" in r.json()["detail"], r.text
    time.sleep(OPEN_TIMEOUT_S)
    assert served_items(open_) == before
