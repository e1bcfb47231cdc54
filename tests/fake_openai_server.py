"""A fake OpenAI-compatible chat-completions server for tests: real HTTP on 127.0.0.1, scriptable failures.

It speaks POST /v1/chat/completions the way OpenAI does (request and chat.completion reply shapes from the OpenAI API
reference), checks that images are base64 data URLs and that a response_format is given, and answers every key the
request's JSON schema requires. It can be told to answer 429 (with Retry-After) or 500 the first N times, to sleep
before answering, or to reply malformed JSON, fenced JSON, a reply missing a key or with an empty answer, or a refusal.

In tests:
    with FakeOpenAIServer(rate_limit_first=2) as server:
        teacher = OpenAITeacher(server.url, "fake-model")
        ...
        assert server.count == 3

As a process (for subprocess tests of `maemi teach`); it prints `FAKE_OPENAI_URL http://127.0.0.1:PORT/v1`:
    python tests/fake_openai_server.py --port 0 --mode ok --rate-limit-first 1 --sleep 0.5
Control a running server with POST /control (JSON of FakeBehaviour fields, plus "reset": true to forget requests);
read what it got with GET /stats ({"count", "per_image", "requests"}).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

MODES = ("ok", "fenced", "malformed", "omit-key", "empty-answer", "refusal")


@dataclass
class FakeBehaviour:
    mode: str = "ok"  # one of MODES: how a successful request is answered
    rate_limit_first: int = 0  # answer 429 to the first N requests (counted since the last configure)
    retry_after: float | None = None  # seconds sent with a 429, as Retry-After and retry-after-ms
    fail_first: int = 0  # then answer 500 to the next N requests
    sleep_s: float = 0.0  # sleep this long before answering ...
    sleep_first: int | None = None  # ... the first N requests only (None: every request)
    api_key: str | None = None  # when set, require "Authorization: Bearer <api_key>" (401 otherwise)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")


class BadRequest(Exception):
    pass


def _image_facts(url: str) -> dict:
    """Check an image_url is a base64 data URL of a decodable image; return its mime type, size and hash."""
    match = re.fullmatch(r"data:(image/[a-z]+);base64,(.+)", url, re.DOTALL)
    if not match:
        raise BadRequest(f"image_url is not a base64 data URL: {url[:40]!r}")
    try:
        data = base64.b64decode(match.group(2), validate=True)
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height, fmt = image.width, image.height, image.format
    except (binascii.Error, OSError) as e:
        raise BadRequest(f"image_url does not decode to an image: {e}") from None
    return {"mime": match.group(1), "format": fmt, "width": width, "height": height,
            "sha256": hashlib.sha256(data).hexdigest()}


def _parse_request(body: dict) -> tuple[dict, list[str]]:
    """Validate a chat-completions request; return (record of it, the answer keys it asks for)."""
    if not isinstance(body.get("model"), str) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("'model' (string) and 'messages' (non-empty list) are required")
    system, texts, images = [], [], []
    for message in body["messages"]:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts or []:
            if part.get("type") == "text":
                (system if message.get("role") == "system" else texts).append(part["text"])
            elif part.get("type") == "image_url":
                images.append(_image_facts(part["image_url"]["url"]))
            else:
                raise BadRequest(f"unknown content part type {part.get('type')!r}")
    user_text = "\n".join(texts)
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        raise BadRequest("response_format is missing")
    if fmt.get("type") == "json_schema":
        schema = fmt.get("json_schema", {}).get("schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("required"), list):
            raise BadRequest("response_format.json_schema.schema with a 'required' list is missing")
        keys = schema["required"]
    elif fmt.get("type") == "json_object":  # no schema: take the keys from the numbered "[key]" question lines
        keys = re.findall(r"^\d+\. \[([^\]]+)\]", user_text, re.MULTILINE)
    else:
        raise BadRequest(f"unsupported response_format type {fmt.get('type')!r}")
    record = {"model": body["model"], "system": "\n".join(system), "user_text": user_text, "images": images,
              "response_format": fmt, "temperature": body.get("temperature")}
    return record, keys


def _content(mode: str, keys: list[str], images: list[dict]) -> str:
    tag = images[0]["sha256"][:8] if images else "none"  # answers differ per image, so tests can match them up
    answers = {k: {"long": f"Looking step by step at image {tag}: the long answer to {k}.",
                   "short": f"Short answer to {k} for image {tag}."} for k in keys}
    if mode == "malformed":
        return '{"this is": not JSON'
    if mode == "omit-key" and keys:
        answers.pop(keys[-1])
    if mode == "empty-answer" and keys:
        answers[keys[0]]["short"] = "  "
    text = json.dumps(answers)
    return f"```json\n{text}\n```" if mode == "fenced" else text


class FakeOpenAIServer:
    def __init__(self, port: int = 0, **behaviour) -> None:
        self.behaviour = FakeBehaviour(**behaviour)
        self.requests: list[dict] = []  # every request received, in order, with the status it was answered
        self._since_configure = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def per_image(self) -> Counter:
        """How many requests carried each image (keyed by the sha256 of the encoded image bytes)."""
        with self._lock:
            return Counter(image["sha256"] for r in self.requests for image in r["images"])

    def configure(self, reset: bool = False, **changes) -> None:
        """Change behaviour; failure counts (rate_limit_first, ...) start again from the next request."""
        with self._lock:
            self.behaviour = dataclasses.replace(self.behaviour, **changes)
            self._since_configure = 0
            if reset:
                self.requests.clear()

    def stats(self) -> dict:
        with self._lock:
            requests = [dict(r) for r in self.requests]
        return {"count": len(requests), "per_image": dict(self.per_image()), "requests": requests}

    def start(self) -> FakeOpenAIServer:
        # a short poll interval: shutdown() waits up to one interval, and tests start many servers
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers that are sleeping
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _answer(self, headers, body: dict) -> tuple[int, dict, dict]:
        """(status, extra headers, JSON body) for one chat-completions request."""
        with self._lock:
            b = self.behaviour
            n = self._since_configure
            self._since_configure += 1
        try:
            parsed, keys = _parse_request(body)
        except (BadRequest, AttributeError, KeyError, TypeError) as e:
            parsed, keys, error = {"images": []}, [], e
        else:
            error = None
        with self._lock:
            record = {"n": len(self.requests), "status": None, **parsed}
            self.requests.append(record)
        if b.sleep_s and (b.sleep_first is None or n < b.sleep_first):
            self._stopping.wait(b.sleep_s)
        if b.api_key is not None and headers.get("Authorization") != f"Bearer {b.api_key}":
            status, extra = 401, {}
            reply = _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        elif error is not None:
            status, extra, reply = 400, {}, _error(f"bad request: {error}", "invalid_request_error", None)
        elif n < b.rate_limit_first:
            extra = {}
            if b.retry_after is not None:
                # both forms: Retry-After is whole seconds (RFC 9110), retry-after-ms is OpenAI's finer one
                extra = {"Retry-After": str(max(1, round(b.retry_after))),
                         "retry-after-ms": str(int(b.retry_after * 1000))}
            status, reply = 429, _error("Rate limit reached.", "requests", "rate_limit_exceeded")
        elif n < b.rate_limit_first + b.fail_first:
            status, extra, reply = 500, {}, _error("The server had an error.", "server_error", None)
        else:
            content = _content(b.mode, keys, parsed["images"])
            message = {"role": "assistant", "content": content, "refusal": None}
            if b.mode == "refusal":  # how structured outputs report a safety refusal
                message = {"role": "assistant", "content": None, "refusal": "I can't help with that request."}
            prompt_tokens = len(parsed["system"] + parsed["user_text"]) // 4 + 85 * len(parsed["images"])
            completion_tokens = len(content) // 4
            status, extra, reply = 200, {}, {
                "id": f"chatcmpl-fake-{record['n']}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": parsed["model"],
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens},
            }
        with self._lock:
            record["status"] = status
        return status, extra, reply

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the openai client expects

            def log_message(self, format, *args) -> None:  # quiet test output
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode("utf-8")
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and hung up
                    self.close_connection = True

            def _body(self) -> dict | None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    return None
                return body if isinstance(body, dict) else None

            def do_GET(self) -> None:
                if self.path == "/stats":
                    self._send(200, server.stats())
                else:
                    self._send(404, _error(f"no route GET {self.path}", "invalid_request_error", None))

            def do_POST(self) -> None:
                body = self._body()
                if body is None:
                    self._send(400, _error("body is not a JSON object", "invalid_request_error", None))
                elif self.path == "/v1/chat/completions":
                    status, headers, reply = server._answer(self.headers, body)
                    self._send(status, reply, headers)
                elif self.path == "/control":
                    try:
                        server.configure(**body)
                    except (TypeError, ValueError) as e:
                        self._send(400, _error(str(e), "invalid_request_error", None))
                    else:
                        self._send(200, dataclasses.asdict(server.behaviour))
                else:
                    self._send(404, _error(f"no route POST {self.path}", "invalid_request_error", None))

        return Handler


def _error(message: str, type_: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--rate-limit-first", type=int, default=0)
    parser.add_argument("--retry-after", type=float, default=None)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep before answering")
    parser.add_argument("--sleep-first", type=int, default=None, help="sleep only for the first N requests")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    server = FakeOpenAIServer(args.port, mode=args.mode, rate_limit_first=args.rate_limit_first,
                              retry_after=args.retry_after, fail_first=args.fail_first, sleep_s=args.sleep,
                              sleep_first=args.sleep_first, api_key=args.api_key)
    print(f"FAKE_OPENAI_URL {server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
