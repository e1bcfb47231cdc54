"""The remote teacher: a large vision-language model behind any OpenAI-compatible chat-completions endpoint.

MAEMI distils GPT-4 Turbo with Vision into a small model by "teaching via data": the teacher is asked, once per
image, a set of questions and answers each one short and long. The same request works against OpenAI, vLLM,
Ollama and llama.cpp servers, so the teacher can also be a local open model when images may not leave the lab.

One request per image (or image group) carries every question; the reply is asked for as structured output
(a strict JSON schema) and validated here, because local servers do not always enforce the schema.

References:
- MAEMI paper (Srinivas et al., ICML 2024 workshop): teacher prompting with question families, short + long answers.
- Kojima et al. 2022, "Large Language Models are Zero-Shot Reasoners": zero-shot chain-of-thought prompting.
- OpenAI API docs, "Structured Outputs" (response_format json_schema, strict) and "Vision" (base64 data URLs).
- OpenAI cookbook, "How to handle rate limits": exponential backoff with jitter, honour Retry-After.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import io
import json
import logging
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import openai
from PIL import Image

from maemi.data.datasets import file_sha256
from maemi.data.images import ImageReadError, load_image
from maemi.fileio import atomic_write_json
from maemi.teachers.questions import COT_INSTRUCTION, Question, TeacherReply, TeacherReplyError, check_reply

log = logging.getLogger(__name__)

SCHEMA_NAME = "micrograph_answers"
CACHE_VERSION = 1  # bump when the prompt layout changes in a way the key does not capture


class TeacherRequestError(RuntimeError):
    """The endpoint could not be reached or refused the request (after retries, where retrying makes sense)."""


def answer_schema(questions: list[Question]) -> dict:
    """JSON schema of a reply: {question key: {"long": str, "short": str}} for every question, nothing else."""
    # "long" comes first: structured outputs are generated in schema order, so the model reasons in the long
    # answer before condensing it into the short one (chain of thought before the conclusion).
    answer = {
        "type": "object",
        "properties": {"long": {"type": "string"}, "short": {"type": "string"}},
        "required": ["long", "short"],
        "additionalProperties": False,
    }
    keys = [q.key for q in questions]
    return {"type": "object", "properties": {k: answer for k in keys}, "required": keys, "additionalProperties": False}


_FENCED_JSON = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL | re.IGNORECASE)


def parse_reply(content: str | None, questions: list[Question]) -> dict[str, dict[str, str]]:
    """Parse reply content and validate it against answer_schema(questions); TeacherReplyError says what is wrong."""
    if not content or not content.strip():
        raise TeacherReplyError("empty reply")
    match = _FENCED_JSON.match(content)  # some local servers wrap JSON in ```json fences
    text = match.group(1) if match else content
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TeacherReplyError(f"reply is not JSON ({e.msg} at char {e.pos}): {content[:120]!r}") from None
    if not isinstance(obj, dict):
        raise TeacherReplyError(f"reply is a JSON {type(obj).__name__}, expected an object")
    extra = sorted(set(obj) - {q.key for q in questions})
    if extra:
        raise TeacherReplyError(f"reply has unknown key(s): {', '.join(extra)}")
    answers = {}
    for k, entry in obj.items():
        if not isinstance(entry, dict) or set(entry) != {"short", "long"}:
            raise TeacherReplyError(f"answer to {k!r} needs exactly 'short' and 'long': {entry!r:.120}")
        for length, value in entry.items():
            if not isinstance(value, str):
                raise TeacherReplyError(f"{length} answer to {k!r} is a {type(value).__name__}, expected a string")
        answers[k] = {"short": entry["short"].strip(), "long": entry["long"].strip()}
    check_reply(TeacherReply(answers=answers), questions)  # every question answered, no empty answer
    return answers


def image_data_url(path: Path, max_side: int) -> str:
    """PNG data URL of the image, downscaled so its longer side <= max_side. The info bar is kept: the teacher reads
    the scale bar and magnification from it. load_image rescales 16-bit TIFFs to [0, 1]."""
    pixels = load_image(path)  # float32 [0, 1], (H, W) or (H, W, 3)
    return png_data_url(Image.fromarray(np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)), max_side)


def png_data_url(image: Image.Image, max_side: int) -> str:
    """PNG data URL of a picture, downscaled so its longer side <= max_side."""
    w, h = image.size
    if max(w, h) > max_side:
        scale = max_side / max(w, h)
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: JPEG artefacts would blur the scale-bar digits
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def context_text(label: str | None, metadata: dict | None) -> str:
    """What the dataset already knows about the image, told to the teacher so its answers agree with it."""
    facts = []
    if label:
        facts.append(f"The dataset labels this image as {label!r}.")
    if metadata:
        facts.append("Metadata: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in metadata.items()) + ".")
    return " ".join(facts)


def questions_text(questions: list[Question]) -> str:
    lines = [f"{i}. [{q.key}] {q.text}" for i, q in enumerate(questions, 1)]
    return (
        "Answer every question below about the image(s).\n"
        + "\n".join(lines)
        + "\n\nReply with one JSON object whose keys are the bracketed question keys. Each value is an object with "
        '"long": a detailed answer that first describes what is visible and then reasons step by step to the answer, '
        'and "short": the answer in one sentence. If the image does not show enough to answer, say so in both.'
    )


def retry_after_seconds(headers) -> float | None:
    """Delay the server asks for: retry-after-ms (OpenAI), or Retry-After in seconds or as an HTTP date."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _image_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as e:  # the same error load_image gives, so a cache lookup fails like a cache miss would
        raise ImageReadError(path, f"cannot read the file: {e.strerror}") from None


def _retryable(error: Exception) -> bool:
    if isinstance(error, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


def _describe(error: Exception) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}"
    return f"{type(error).__name__}: {error}"


class OpenAITeacher:
    """Asks an OpenAI-compatible endpoint every question about an image in one request; retries, caches, validates.

    Thread-safe: the openai client (one httpx connection pool) is shared across threads, and the cache is one file
    per request key written atomically.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 6,
        cache_dir: Path | None = None,
        max_image_side: int = 1024,
        temperature: float = 0.0,
        use_json_schema: bool = True,
        backoff_base: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_image_side < 1:
            raise ValueError(f"max_image_side must be >= 1, got {max_image_side}")
        self.base_url = base_url
        self.model = model
        self.name = f"openai:{model}"
        self.max_retries = max_retries
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_image_side = max_image_side
        self.temperature = temperature
        self.use_json_schema = use_json_schema
        self.backoff_base = backoff_base
        self.max_backoff = max_backoff
        # Local servers (vLLM, Ollama, llama.cpp) ignore the key but the client insists on one.
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        # max_retries=0: retries happen in answer(), visibly, with Retry-After honoured and the attempts counted.
        self.client = openai.OpenAI(base_url=base_url, api_key=key, timeout=timeout, max_retries=0)

    def answer(
        self,
        images: list[Path],
        questions: list[Question],
        *,
        label: str | None = None,
        metadata: dict | None = None,
        instruction: str = "",
    ) -> TeacherReply:
        """Answer every question about the image(s) in one request. Raises TeacherReplyError if the reply does not
        fit the schema, TeacherRequestError if the endpoint fails after retries, ImageReadError for a bad image."""
        if not images:
            raise ValueError("answer() needs at least one image")
        if not questions:
            raise ValueError("answer() needs at least one question")
        keys = [q.key for q in questions]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate question keys: {sorted(k for k in set(keys) if keys.count(k) > 1)}")
        images = [Path(p) for p in images]
        schema = answer_schema(questions)
        parts = (context_text(label, metadata), instruction.strip(), questions_text(questions))
        prompt = "\n\n".join(part for part in parts if part)

        cache_path = None
        if self.cache_dir is not None:
            cache_path = self.cache_dir / f"{self._cache_key(images, prompt, schema)}.json"
            cached = self._read_cache(cache_path, questions)
            if cached is not None:
                return cached

        response = self._create_with_retries(self._messages(images, prompt), schema)
        choice = response.choices[0] if response.choices else None
        content = choice.message.content if choice is not None else None
        refusal = getattr(choice.message, "refusal", None) if choice is not None else None
        if not content and refusal:  # structured outputs report a safety refusal here instead of content
            raise TeacherReplyError(f"teacher refused: {refusal}")
        try:
            answers = parse_reply(content, questions)
        except TeacherReplyError as e:
            if choice is not None and choice.finish_reason == "length":
                raise TeacherReplyError(f"reply cut off at the token limit (finish_reason=length): {e}") from None
            raise
        usage = {
            "prompt_tokens": getattr(response.usage, "prompt_tokens", 0) or 0,
            "completion_tokens": getattr(response.usage, "completion_tokens", 0) or 0,
        }
        if cache_path is not None:
            atomic_write_json(cache_path, {"model": self.model, "answers": answers, "usage": usage})
        return TeacherReply(answers=answers, usage=usage)

    def _messages(self, images: list[Path], prompt: str) -> list[dict]:
        parts: list[dict] = []
        for i, path in enumerate(images, 1):
            if len(images) > 1:  # name each image so questions and answers can refer to "image 2"
                parts.append({"type": "text", "text": f"Image {i}:"})
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(path, self.max_image_side)}})
        parts.append({"type": "text", "text": prompt})
        return [{"role": "system", "content": COT_INSTRUCTION}, {"role": "user", "content": parts}]

    def _response_format(self, schema: dict) -> dict:
        if self.use_json_schema:
            return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema}}
        # For servers without schema-constrained decoding: JSON mode, the shape described in the prompt only.
        return {"type": "json_object"}

    def _create_with_retries(self, messages: list[dict], schema: dict):
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    response_format=self._response_format(schema),
                )
            except openai.APIError as e:
                if not _retryable(e):
                    raise TeacherRequestError(f"{self.base_url} refused the request ({_describe(e)})") from e
                if attempt == attempts - 1:
                    raise TeacherRequestError(
                        f"{self.base_url}: giving up after {attempts} attempt(s); last error {_describe(e)}"
                    ) from e
                delay = self._delay(attempt, e)
                log.warning("%s: %s; retry %d/%d in %.2fs",
                            self.base_url, _describe(e), attempt + 1, self.max_retries, delay)
                time.sleep(delay)

    def _delay(self, attempt: int, error: Exception) -> float:
        asked = retry_after_seconds(error.response.headers) if isinstance(error, openai.APIStatusError) else None
        if asked is not None:
            return min(asked, self.max_backoff)
        # Exponential backoff with jitter, so that threads rate-limited together do not retry together.
        return min(self.max_backoff, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _cache_key(self, images: list[Path], prompt: str, schema: dict) -> str:
        # Everything that changes the request: image bytes (hashed from the file, so a cache hit skips decoding),
        # how they are encoded, the full text, the model, the decoding settings and the schema.
        request = {
            "version": CACHE_VERSION,
            "model": self.model,
            "images": [_image_sha256(p) for p in images],
            "max_image_side": self.max_image_side,
            "system": COT_INSTRUCTION,
            "prompt": prompt,
            "response_format": self._response_format(schema),
            "temperature": self.temperature,
        }
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()

    def _read_cache(self, path: Path, questions: list[Question]) -> TeacherReply | None:
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            answers = parse_reply(json.dumps(entry["answers"]), questions)
        except (OSError, ValueError, KeyError, TypeError) as e:  # TeacherReplyError is a ValueError
            log.warning("ignoring unreadable cache entry %s (%s); asking the teacher again", path, e)
            return None
        return TeacherReply(answers=answers, usage={"prompt_tokens": 0, "completion_tokens": 0}, cached=True)
