"""The remote teacher against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py) speaking the OpenAI API."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from maemi.data.images import ImageReadError
from maemi.teachers.questions import COT_INSTRUCTION, Question, TeacherReplyError
from maemi.teachers.remote import (
    OpenAITeacher,
    TeacherRequestError,
    answer_schema,
    image_data_url,
    parse_reply,
    retry_after_seconds,
)

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402

QUESTIONS = [
    Question("basics.material", "basics", "What nanomaterial is shown?", "vqa"),
    Question("basics.scale", "basics", "What does one unit of the scale bar represent?", "vqa"),
    Question("morphology.shape", "morphology", "What is the general shape of the structures?", "vqa"),
]
KEYS = [q.key for q in QUESTIONS]


def write_micrograph(path: Path, width: int = 300, height: int = 200, seed: int = 0) -> Path:
    """A grey PNG with random texture and a white info bar over the bottom 15% of rows, like an SEM export."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 160, size=(height, width), dtype=np.uint8)
    pixels[int(height * 0.85):] = 255
    Image.fromarray(pixels).save(path)
    return path


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture
def server():
    with FakeOpenAIServer() as s:
        yield s


@pytest.fixture
def image(tmp_path) -> Path:
    return write_micrograph(tmp_path / "particles.png")


def make_teacher(server: FakeOpenAIServer, **kwargs) -> OpenAITeacher:
    options = dict(api_key="test-key", timeout=5.0, max_retries=3, max_image_side=128, backoff_base=0.01)
    return OpenAITeacher(server.url, "fake-vlm", **(options | kwargs))


def test_good_reply_is_parsed_with_every_answer_and_usage(server, image):
    teacher = make_teacher(server)
    reply = teacher.answer([image], QUESTIONS)
    assert teacher.name == "openai:fake-vlm"
    assert list(reply.answers) == KEYS
    tag = server.requests[0]["images"][0]["sha256"][:8]
    for key in KEYS:
        assert reply.answers[key]["short"] == f"Short answer to {key} for image {tag}."
        assert key in reply.answers[key]["long"]
    assert reply.usage["prompt_tokens"] > 0 and reply.usage["completion_tokens"] > 0
    assert not reply.cached
    assert server.count == 1


def test_request_carries_cot_instruction_schema_context_and_downscaled_image(server, image):
    make_teacher(server).answer([image], QUESTIONS, label="Particles", metadata={"magnification": "11,000x"},
                                instruction="Focus on the particles.")
    request = server.requests[0]
    assert request["system"] == COT_INSTRUCTION
    assert request["temperature"] == 0.0
    fmt = request["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema == answer_schema(QUESTIONS)
    assert schema["required"] == KEYS and schema["additionalProperties"] is False
    for key in KEYS:
        assert schema["properties"][key]["required"] == ["long", "short"]
        assert schema["properties"][key]["additionalProperties"] is False
    text = request["user_text"]
    for i, q in enumerate(QUESTIONS, 1):
        assert f"{i}. [{q.key}] {q.text}" in text
    assert "labels this image as 'Particles'" in text and "magnification: 11,000x" in text
    assert "Focus on the particles." in text
    # 300x200 with max side 128: downscaled, aspect kept (the info bar is not cropped away)
    assert request["images"] == [dict(request["images"][0], mime="image/png", format="PNG", width=128, height=85)]


def test_image_data_url_keeps_info_bar_and_does_not_upscale(tmp_path):
    big = decode_data_url(image_data_url(write_micrograph(tmp_path / "big.png", 400, 300), 100))
    assert big.size == (100, 75)
    pixels = np.asarray(big)
    assert pixels[-5:].min() >= 250  # the white info bar survives at the bottom
    assert pixels[:50].mean() < 120
    small = decode_data_url(image_data_url(write_micrograph(tmp_path / "small.png", 60, 40), 100))
    assert small.size == (60, 40)


def test_16bit_tiff_is_sent_with_its_contrast(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))  # 12-bit data in a 16-bit container
    path = tmp_path / "detector.tif"
    tifffile.imwrite(path, ramp)
    sent = np.asarray(decode_data_url(image_data_url(path, 1024)))
    assert sent.shape == (32, 64) and sent.dtype == np.uint8
    assert len(np.unique(sent)) > 10  # not crushed to one grey level
    assert (np.diff(sent[0].astype(int)) >= 0).all()  # the ramp stays a ramp


@pytest.mark.parametrize("cached", [False, True])
def test_unreadable_image_is_named_and_nothing_is_sent(server, tmp_path, cached):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    teacher = make_teacher(server, cache_dir=tmp_path / "cache" if cached else None)
    for path in (bad, tmp_path / "missing.png"):
        with pytest.raises(ImageReadError, match=path.name):
            teacher.answer([path], QUESTIONS)
    assert server.count == 0


def test_multi_image_request_names_each_image(server, tmp_path):
    images = [write_micrograph(tmp_path / f"{i}.png", seed=i) for i in range(2)]
    make_teacher(server).answer(images, QUESTIONS, instruction="Compare the two images.")
    request = server.requests[0]
    assert len(request["images"]) == 2
    assert "Image 1:" in request["user_text"] and "Image 2:" in request["user_text"]


def test_json_object_mode_for_servers_without_schemas(server, image):
    reply = make_teacher(server, use_json_schema=False).answer([image], QUESTIONS)
    assert server.requests[0]["response_format"] == {"type": "json_object"}
    assert list(reply.answers) == KEYS


@pytest.mark.parametrize("failure", [{"rate_limit_first": 2}, {"fail_first": 2}])
def test_429_and_500_are_retried_then_succeed(image, failure):
    with FakeOpenAIServer(**failure) as server:
        reply = make_teacher(server).answer([image], QUESTIONS)
        assert [r["status"] for r in server.requests] == [429 if "rate_limit_first" in failure else 500] * 2 + [200]
    assert list(reply.answers) == KEYS


def test_retry_after_is_honoured(image):
    with FakeOpenAIServer(rate_limit_first=1, retry_after=0.3) as server:
        start = time.monotonic()
        make_teacher(server, backoff_base=0.001).answer([image], QUESTIONS)
        assert time.monotonic() - start >= 0.3
        assert server.count == 2


def test_timeout_is_retried(image):
    with FakeOpenAIServer(sleep_s=2.0, sleep_first=1) as server:
        reply = make_teacher(server, timeout=0.3).answer([image], QUESTIONS)
        assert server.count == 2
    assert list(reply.answers) == KEYS


def test_permanent_failure_raises_after_max_retries(image):
    with FakeOpenAIServer(fail_first=100) as server:
        with pytest.raises(TeacherRequestError, match=r"giving up after 3 attempt\(s\).*HTTP 500"):
            make_teacher(server, max_retries=2).answer([image], QUESTIONS)
        assert server.count == 3


def test_connection_refused_raises_after_max_retries(image):
    with FakeOpenAIServer() as server:
        url = server.url
    teacher = OpenAITeacher(url, "fake-vlm", timeout=1.0, max_retries=1, backoff_base=0.01)
    with pytest.raises(TeacherRequestError, match=r"giving up after 2 attempt\(s\).*APIConnectionError"):
        teacher.answer([image], QUESTIONS)


def test_client_errors_are_not_retried(image):
    with FakeOpenAIServer(api_key="the-right-key") as server:
        with pytest.raises(TeacherRequestError, match="refused the request.*HTTP 401"):
            make_teacher(server, api_key="a-wrong-key").answer([image], QUESTIONS)
        assert server.count == 1


@pytest.mark.parametrize("mode, reason", [
    ("malformed", "not JSON"),
    ("omit-key", "no answer for question 'morphology.shape'"),
    ("empty-answer", "'basics.material': the short answer is missing or empty"),
    ("refusal", "teacher refused: I can't help"),
])
def test_bad_replies_raise_teacher_reply_error(image, mode, reason):
    with FakeOpenAIServer(mode=mode) as server:
        with pytest.raises(TeacherReplyError, match=reason):
            make_teacher(server).answer([image], QUESTIONS)
        assert server.count == 1  # a bad reply is the pipeline's reject, not a transport retry


def test_fenced_json_reply_is_accepted(image):
    with FakeOpenAIServer(mode="fenced") as server:
        reply = make_teacher(server).answer([image], QUESTIONS)
    assert list(reply.answers) == KEYS


def test_parse_reply_checks_types_and_unknown_keys():
    good = {k: {"short": "s", "long": "l"} for k in KEYS}
    assert parse_reply(json.dumps(good), QUESTIONS) == good
    with pytest.raises(TeacherReplyError, match="unknown key"):
        parse_reply(json.dumps(good | {"extra": {"short": "s", "long": "l"}}), QUESTIONS)
    with pytest.raises(TeacherReplyError, match="expected a string"):
        parse_reply(json.dumps(good | {"basics.scale": {"short": 3, "long": "l"}}), QUESTIONS)
    with pytest.raises(TeacherReplyError, match="needs exactly 'short' and 'long'"):
        parse_reply(json.dumps(good | {"basics.scale": "just text"}), QUESTIONS)
    with pytest.raises(TeacherReplyError, match="expected an object"):
        parse_reply("[1, 2]", QUESTIONS)


def test_cache_answers_a_repeat_without_a_request(server, image, tmp_path):
    cache = tmp_path / "cache"
    first = make_teacher(server, cache_dir=cache).answer([image], QUESTIONS, label="Particles")
    # a new teacher instance: the cache lives on disk, not in memory
    again = make_teacher(server, cache_dir=cache).answer([image], QUESTIONS, label="Particles")
    assert server.count == 1
    assert again.cached and again.answers == first.answers
    assert again.usage == {"prompt_tokens": 0, "completion_tokens": 0}
    assert len(list(cache.glob("*.json"))) == 1 and not list(cache.glob(".*"))  # no temp file left behind
    # anything that changes the request is a new key: label, questions, image bytes
    make_teacher(server, cache_dir=cache).answer([image], QUESTIONS, label="Powder")
    make_teacher(server, cache_dir=cache).answer([image], QUESTIONS[:2], label="Particles")
    write_micrograph(image, seed=1)
    make_teacher(server, cache_dir=cache).answer([image], QUESTIONS, label="Particles")
    assert server.count == 4


def test_bad_replies_are_not_cached(image, tmp_path):
    with FakeOpenAIServer(mode="malformed") as server:
        teacher = make_teacher(server, cache_dir=tmp_path / "cache")
        with pytest.raises(TeacherReplyError):
            teacher.answer([image], QUESTIONS)
        server.configure(mode="ok")
        assert not teacher.answer([image], QUESTIONS).cached
        assert server.count == 2


def test_answer_is_thread_safe(server, tmp_path):
    images = [write_micrograph(tmp_path / f"{i}.png", 64, 48, seed=i) for i in range(8)]
    server.configure(rate_limit_first=3)  # some threads get a 429 and retry concurrently
    teacher = make_teacher(server, cache_dir=tmp_path / "cache")
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: teacher.answer([p], QUESTIONS), images))
    tags = {r.answers["basics.material"]["short"].rsplit(" ", 1)[1] for r in replies}
    assert len(tags) == 8  # each reply belongs to its own image
    assert server.count == 8 + 3
    per_image = server.per_image()
    assert len(per_image) == 8 and sum(per_image.values()) == 8 + 3
    assert len(list((tmp_path / "cache").glob("*.json"))) == 8


def test_retry_after_header_forms():
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    in_two_minutes = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 100 < retry_after_seconds({"retry-after": in_two_minutes}) <= 120
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


def test_fake_server_runs_as_a_process_with_control_and_stats(image):
    script = Path(__file__).parent / "fake_openai_server.py"
    proc = subprocess.Popen([sys.executable, str(script), "--port", "0", "--mode", "omit-key"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("FAKE_OPENAI_URL http://127.0.0.1:")
        url = line.split()[1]
        teacher = OpenAITeacher(url, "fake-vlm", max_retries=0)
        with pytest.raises(TeacherReplyError):
            teacher.answer([image], QUESTIONS)
        root = url.removesuffix("/v1")
        control = urllib.request.Request(f"{root}/control", data=json.dumps({"mode": "ok"}).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(control, timeout=5))["mode"] == "ok"
        assert list(teacher.answer([image], QUESTIONS).answers) == KEYS
        stats = json.load(urllib.request.urlopen(f"{root}/stats", timeout=5))
        assert stats["count"] == 2 and list(stats["per_image"].values()) == [2]
    finally:
        proc.terminate()
        proc.wait(timeout=5)
