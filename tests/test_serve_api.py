"""`maemi serve`'s HTTP API on a real uvicorn server (127.0.0.1, a free port, in a thread) in front of the tiny run of
test_assistant: answers equal the Assistant's, auth, bad uploads answered with clear 4xx, the OpenAI-compatible
endpoint through the openai client and through our own OpenAITeacher, 50 concurrent requests sharing forward passes,
and the batcher's back-pressure (queue full, timeout, one bad item failing alone)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import socket
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tifffile
import uvicorn
from PIL import Image
from typer.testing import CliRunner

from maemi.assistant import Assistant
from maemi.cli import app as cli
from maemi.serve.app import ServeConfig, create_app
from maemi.serve.batcher import Batcher, BatcherBusy, BatcherConfig, BatcherTimeout
from maemi.data.images import load_image
from maemi.teachers.measure import split_for_measuring
from maemi.measure.measurements import measure
from maemi.teachers.questions import get_profile
from maemi.teachers.remote import OpenAITeacher
from test_assistant import BRIGHT_Q, GREY_Q, tiny  # noqa: F401  (a fixture: the tiny trained run)
from tiny_text_models import one_thread  # noqa: F401

KEY = "s3cret-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread, for the duration of a `with` block."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def assistant(tiny):
    return Assistant.load(tiny["run"], device="cpu", batch_size=8)


@pytest.fixture(scope="module")
def server(assistant):
    config = ServeConfig(api_key=KEY, max_upload_mb=0.25, model_name="tiny")
    with ServerThread(create_app(assistant, config)) as running:
        yield running


@pytest.fixture(scope="module")
def images(tiny) -> list[Path]:
    return sorted(tiny["images"].rglob("*.png"))


def post(server, path: str, image: Path | bytes, name: str = "x.png", headers=AUTH, **fields) -> httpx.Response:
    data = image.read_bytes() if isinstance(image, Path) else image
    return httpx.post(server.url + path, files={"image": (name, data)}, data=fields, headers=headers, timeout=60)


# ------------------------------------------------------------------------------------------------ answers


def test_ask_caption_and_classify_answer_as_the_assistant_does(server, assistant, images):
    image = images[0]
    r = post(server, "/v1/ask", image, question=BRIGHT_Q)
    assert r.status_code == 200, r.text
    expected = assistant.ask_detailed(image, BRIGHT_Q)[0]  # the upload is measured as the file is
    assert r.json() == {"answer": expected.text, "question": BRIGHT_Q, "context": None, **{
        k: v for k, v in expected.to_dict().items() if k != "answer"}}
    r = post(server, "/v1/ask", image, question=GREY_Q)  # a measured number: which slot, and what was measured
    expected = assistant.ask_detailed(image, GREY_Q)[0]
    assert r.json()["answer"] == expected.text and r.json()["numbers"] == [
        {"slot": "brightness_mean", "value": r.json()["measurements"][0]["values"]["brightness_mean"]}]
    measured = post(server, "/v1/measure", image).json()
    assert measured["values"]["brightness_mean"] in r.json()["answer"]  # the page's panel shows these values
    assert measured["overlay"].startswith("data:image/png;base64,")
    r = post(server, "/v1/ask", image, question=BRIGHT_Q, context="5 kV, sample 7")
    assert r.json()["answer"] == assistant.ask(image, BRIGHT_Q, context="5 kV, sample 7")[0]

    r = post(server, "/v1/caption", image)
    assert r.status_code == 200 and r.json()["caption"] == assistant.caption(image)[0]

    r = post(server, "/v1/classify", image, top_k="2")
    assert r.status_code == 200, r.text
    expected = assistant.classify(image, top_k=2)[0]
    got = r.json()
    assert got["shots"] == 0 and [p["label"] for p in got["predictions"]] == [label for label, _ in expected]
    assert [p["probability"] for p in got["predictions"]] == pytest.approx([p for _, p in expected], abs=1e-5)
    full = post(server, "/v1/classify", image).json()["predictions"]  # top-5 of 3 classes: all of them
    assert len(full) == 3 and sum(p["probability"] for p in full) == pytest.approx(1.0, abs=1e-5)
    few = post(server, "/v1/classify", image, shots="2").json()  # demonstrations from the run's training images
    expected = assistant.classify(image, shots=2)[0]
    assert few["shots"] == 2 and [(p["label"], pytest.approx(p["probability"], abs=1e-5)) for p in
                                  few["predictions"]] == expected
    turned = post(server, "/v1/classify", image, views="4").json()  # test-time augmentation over 4 quarter turns
    expected = assistant.classify(image, views=4)[0]
    assert turned["views"] == 4 and [(p["label"], pytest.approx(p["probability"], abs=1e-5)) for p in
                                     turned["predictions"]] == expected
    assert post(server, "/v1/classify", image, views="9").status_code == 422


def test_several_images_are_asked_about_together(server, assistant, images):
    pair = [images[0], images[-1]]
    files = [("image", (p.name, p.read_bytes())) for p in pair]
    r = httpx.post(server.url + "/v1/ask", files=files, data={"question": "Which image is brighter?"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == assistant.ask([pair], "Which image is brighter?")[0]


def test_measure_gives_the_measure_teachers_numbers_and_the_scale(server, images):
    r = post(server, "/v1/measure", images[0], nm_per_pixel="2.5")
    assert r.status_code == 200, r.text
    grey, bar, _, _ = split_for_measuring(load_image(images[0]))
    body = r.json()
    assert body["info_bar_px"] == bar and body["measurements"] == dataclasses.asdict(measure(grey, nm_per_pixel=2.5))
    assert (body["scale"]["nm_per_pixel"], body["scale"]["source"]) == (2.5, "explicit")
    # a Zeiss TIFF carries its own scale in tag 34118: the upload keeps it
    tag = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 3.25 nm\r\n"
    buffer = io.BytesIO()
    pixels = np.asarray(Image.open(images[0]).convert("L"))
    tifffile.imwrite(buffer, pixels, extratags=[(34118, 2, len(tag), tag, True)])
    body = post(server, "/v1/measure", buffer.getvalue(), name="zeiss.tif").json()
    assert (body["scale"]["nm_per_pixel"], body["scale"]["source"]) == (3.25, "instrument")
    assert body["measurements"]["nm_per_pixel"] == 3.25 and "Image Pixel Size" in body["scale"]["detail"]
    # a small PNG without an info bar: unknown, and why
    body = post(server, "/v1/measure", images[0]).json()
    assert body["scale"]["nm_per_pixel"] is None and body["measurements"]["nm_per_pixel"] is None
    assert any("no instrument info bar" in note for note in body["scale"]["notes"])


def test_measure_runs_the_segmenter_asked_for(server, images):
    for method in ("classical", "learned", "spots"):
        body = post(server, "/v1/measure", images[0], segmenter=method).json()
        assert body["measurements"]["segmenter"] == method
    r = post(server, "/v1/measure", images[0], segmenter="magic")
    assert r.status_code == 422 and "segmenter" in r.text


def test_preview_is_a_png_of_the_image(server, images):
    r = post(server, "/v1/preview", images[0])
    url = r.json()["data_url"]
    assert url.startswith("data:image/png;base64,")
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert np.array_equal(shown, np.asarray(Image.open(images[0])))  # 8-bit grey PNG: the same pixels


# ------------------------------------------------------------------------------------------------ security


def test_health_and_page_are_open_everything_else_needs_the_key(server, images):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["auth_required"] is True and health["model"] == "tiny"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="file"' in page.text
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path in ("/v1/ask", "/v1/caption", "/v1/classify", "/v1/measure", "/v1/preview"):
            r = post(server, path, images[0], headers=headers, question="q")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers, r.text)
            assert "key" in r.json()["detail"]
        chat = httpx.post(server.url + "/v1/chat/completions", json={"messages": []}, headers=headers)
        assert chat.status_code == 401 and "key" in chat.json()["error"]["message"]
        assert httpx.get(server.url + "/v1/models", headers=headers).status_code == 401
        assert httpx.get(server.url + "/openapi.json", headers=headers).status_code == 401


def test_openapi_schema_describes_the_api(server):
    schema = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    assert {"/v1/ask", "/v1/caption", "/v1/classify", "/v1/measure", "/v1/preview", "/v1/chat/completions",
            "/v1/models", "/health"} <= set(schema["paths"])
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert httpx.get(server.url + "/docs").status_code == 404  # Swagger UI would load from a CDN


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 grey PNG whose header claims width x height pixels: a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_bad_uploads_get_clear_4xx_and_never_a_500(server, images):
    good = images[0].read_bytes()
    cases = [
        (b"just some text, not an image", "notes.png", 415, "not a PNG, JPEG, BMP or TIFF"),
        (b"", "empty.png", 400, "empty"),
        (good[: len(good) // 2], "cut.png", 422, "'cut.png'"),
        (png_claiming(40_000, 40_000), "bomb.png", 413, "1600.0 megapixels is over the server's limit"),
        (b"\x89PNG\r\n\x1a\n" + bytes(300_000), "big.png", 413, "over the server's limit"),
    ]
    for data, name, status, words in cases:
        for path in ("/v1/ask", "/v1/caption", "/v1/classify", "/v1/measure", "/v1/preview"):
            r = post(server, path, data, name=name, question="q")
            assert r.status_code == status and words in r.json()["detail"], (name, path, r.status_code, r.text)
    # A body far over the limit is cut off while it streams in.
    assert post(server, "/v1/caption", bytes(3 * 2**20)).status_code == 413
    # Missing fields, wrong types, a path where an upload belongs, too many images: 4xx with the reason.
    r = httpx.post(server.url + "/v1/ask", files={"image": ("a.png", good)}, headers=AUTH)
    assert r.status_code == 422 and "question" in r.json()["detail"]
    r = httpx.post(server.url + "/v1/ask", data={"image": "/etc/passwd", "question": "q"}, headers=AUTH)
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = post(server, "/v1/classify", images[0], top_k="many")
    assert r.status_code == 422 and "top_k" in r.json()["detail"]
    r = httpx.post(server.url + "/v1/ask", files=[("image", ("a.png", good))] * 6, data={"question": "q"}, headers=AUTH)
    assert r.status_code == 400 and "1 to 5 images" in r.json()["detail"]
    r = post(server, "/v1/classify", images[0], shots="500")
    assert r.status_code == 400 and "shots" in r.json()["detail"]
    r = post(server, "/v1/ask", images[0], question="describe " * 400)
    assert r.status_code == 400 and "max_prompt_len" in r.json()["detail"]
    assert not list(Path(tempfile.gettempdir()).glob("maemi-upload-*")) + list(Path("/dev/shm").glob("maemi-upload-*"))


# ------------------------------------------------------------------------------------------------ OpenAI-compatible


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def test_openai_client_talks_to_maemi(server, assistant, images):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    messages = [{"role": "system", "content": "You are helpful."},
                {"role": "user", "content": [{"type": "text", "text": BRIGHT_Q},
                                             {"type": "image_url", "image_url": {"url": data_url(images[1])}}]}]
    reply = client.chat.completions.create(model="tiny", messages=messages)
    expected = assistant.ask(images[1], BRIGHT_Q)[0]
    assert reply.choices[0].message.content == expected and reply.model == "tiny"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="tiny", messages=messages, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == expected
    grey = [{"role": "user", "content": [{"type": "text", "text": GREY_Q},
                                         {"type": "image_url", "image_url": {"url": data_url(images[1])}}]}]
    reply = client.chat.completions.create(model="tiny", messages=grey)  # an extra field says where numbers come from
    (number,) = reply.model_extra["maemi"]["numbers"]
    assert number["slot"] == "brightness_mean" and number["value"] in reply.choices[0].message.content

    def refused(url: str, status: int = 400) -> str:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": [
                {"type": "text", "text": BRIGHT_Q}, {"type": "image_url", "image_url": {"url": url}}]}])
        assert e.value.status_code == status
        return e.value.message

    assert "does not fetch images from URLs" in refused("https://example.com/a.png")
    assert "file paths" in refused("/etc/passwd")
    assert "file paths" in refused("file:///etc/passwd")
    assert "not valid base64" in refused("data:image/png;base64,@@@")
    assert "not a PNG, JPEG, BMP or TIFF" in refused("data:image/png;base64," + base64.b64encode(b"hello").decode(),
                                                    415)
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": BRIGHT_Q}])


def test_our_remote_teacher_can_learn_from_a_maemi_server(server, assistant, images):
    questions = list(get_profile("generic").questions[:3])
    teacher = OpenAITeacher(server.url + "/v1", "tiny", api_key=KEY, max_retries=0)
    reply = teacher.answer([images[2]], questions)
    for q in questions:
        expected = assistant.ask(images[2], q.text)[0]
        assert reply.answers[q.key] == {"long": expected, "short": expected}


# ------------------------------------------------------------------------------------------------ batching


def test_fifty_concurrent_requests_are_all_answered_sharing_forward_passes(server, assistant, images):
    expected = dict(zip(images, assistant.ask(images, BRIGHT_Q)))
    before = httpx.get(server.url + "/health").json()["served"]

    async def one(client: httpx.AsyncClient, image: Path) -> tuple[Path, httpx.Response]:
        files = {"image": (image.name, image.read_bytes())}
        return image, await client.post("/v1/ask", files=files, data={"question": BRIGHT_Q})

    async def fifty():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*(one(client, images[i % len(images)]) for i in range(50)))

    for image, r in asyncio.run(fifty()):
        assert r.status_code == 200, r.text
        assert r.json()["answer"] == expected[image]
    after = httpx.get(server.url + "/health").json()["served"]
    requests, batches = after["requests"] - before["requests"], after["batches"] - before["batches"]
    assert requests == 50 and batches < 50 and after["largest_batch"] > 1


def test_full_queue_answers_503_and_slow_requests_504(assistant, images):
    async def burst(url: str, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            files = {"image": ("a.png", images[0].read_bytes())}
            return await asyncio.gather(*(client.post("/v1/caption", files=files) for _ in range(n)))

    tight = ServeConfig(batcher=BatcherConfig(max_batch=1, max_wait_ms=0, max_queue=1))
    with ServerThread(create_app(assistant, tight)) as running:
        statuses = [r.status_code for r in asyncio.run(burst(running.url, 40))]
        busy = next(r for r in asyncio.run(burst(running.url, 40)) if r.status_code == 503)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses
    assert "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"

    hurried = ServeConfig(batcher=BatcherConfig(timeout_s=0.001))
    with ServerThread(create_app(assistant, hurried)) as running:
        r = asyncio.run(burst(running.url, 1))[0]
    assert r.status_code == 504 and "timeout" in r.json()["detail"]


def test_batcher_back_pressure_and_one_bad_item_failing_alone():
    release = threading.Event()
    seen: list[list[int]] = []

    def run(key, items):
        release.wait(10)
        seen.append(list(items))
        if -1 in items:
            raise ValueError("bad item")
        return [key * item for item in items]

    async def scenario():
        batcher = Batcher(run, BatcherConfig(max_batch=8, max_wait_ms=50, max_queue=3, timeout_s=5))
        await batcher.start()
        first = asyncio.create_task(batcher.submit(10, 1))  # taken by the worker, which then blocks in run()
        await asyncio.sleep(0.2)
        queued = [asyncio.create_task(batcher.submit(10, i)) for i in (2, -1, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(BatcherBusy):
            await batcher.submit(10, 4)
        release.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        await batcher.stop()
        return results, batcher.stats

    results, stats = asyncio.run(scenario())
    assert results[0] == 10 and results[1] == 20 and results[3] == 30
    assert isinstance(results[2], ValueError)
    assert seen[:2] == [[1], [2, -1, 3]] and [2] in seen and [3] in seen  # the batch, then one by one

    async def timed_out():
        gate = threading.Event()
        batcher = Batcher(lambda key, items: gate.wait(10) and items, BatcherConfig(timeout_s=0.1))
        await batcher.start()
        with pytest.raises(BatcherTimeout):
            await batcher.submit("k", 1)
        gate.set()
        await batcher.stop()

    asyncio.run(timed_out())


def test_serve_refuses_an_unset_key_variable(tiny, monkeypatch):
    monkeypatch.delenv("MAEMI_TEST_UNSET_KEY", raising=False)
    result = CliRunner().invoke(cli, ["serve", str(tiny["run"]), "--api-key-env", "MAEMI_TEST_UNSET_KEY"])
    assert result.exit_code == 1 and "MAEMI_TEST_UNSET_KEY" in result.output and "not set" in result.output
