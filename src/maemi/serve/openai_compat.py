"""OpenAI-compatible chat completions, so any OpenAI client or tool can talk to MAEMI.

POST /v1/chat/completions takes the images of the user messages (image_url parts holding base64 data: URLs; web
URLs and file paths are refused) and the text of the last user message as the question, and answers with one
chat.completion (or, with "stream": true, the same answer as server-sent chunks). GET /v1/models lists the one model.

Structured replies: MAEMI answers in free text, but a request shaped like `maemi teach --teacher openai`'s (numbered
questions "1. [key] question" with the micrograph_answers JSON schema, or JSON mode) is answered question by question
and returned as {key: {"long": answer, "short": answer}}, so one MAEMI deployment can teach another. The small
model gives one answer per question: long and short are the same text.

References: OpenAI API reference (chat completions, chat.completion and chat.completion.chunk objects, vision
content parts, response_format, error objects); the micrograph_answers schema in maemi.teachers.remote.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maemi.serve.request_guard import GuardedRoute
from maemi.serve.uploads import UploadError, data_url_bytes, upload_cost

MAX_IMAGES = 5  # the most images a training record holds
MAX_JSON_QUESTIONS = 64  # numbered questions in one JSON-mode request (the largest profile asks 25)
MAX_MESSAGES = 1000  # a conversation, and the content parts of a message: far above any real one
MAX_PARTS = 1000


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")
    url: str = Field(description="data:image/png;base64,... (web URLs and file paths are refused)")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str = Field(description='"text" or "image_url"')
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=32)
    content: str | Annotated[list[ContentPart], Field(max_length=MAX_PARTS)] | None = None


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON schema: an object")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class _AnswerPair(BaseModel):  # {"type": "object", "properties": {"long": ..., "short": ...}}
    properties: dict[str, Any]


class _AnswersSchema(BaseModel):  # the micrograph_answers schema (maemi.teachers.remote.answer_schema)
    properties: dict[str, _AnswerPair] = {}
    required: list[str] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send many options MAEMI has no use for
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int | None = None
    stream: bool = False
    response_format: ResponseFormat | None = None


def chat_query(messages: list[ChatMessage]) -> tuple[list[tuple[bytes, str]], str]:
    """((image bytes, where it came from) of every user message in order, the text of the last user message)."""
    images: list[tuple[bytes, str]] = []
    question = ""
    for m, message in enumerate(messages):
        if message.role != "user":
            continue  # system and assistant turns: the small model was trained on single questions
        parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else (
            message.content or [])
        texts = []
        for p, part in enumerate(parts):
            where = f"messages[{m}].content[{p}]"
            if part.type == "text":
                texts.append(part.text or "")
            elif part.type == "image_url":
                url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
                if not url:
                    raise UploadError(400, f"{where}: an image_url part without a url")
                images.append((data_url_bytes(url, where), where))
            else:
                raise UploadError(400, f"{where}: content type {part.type!r} is not supported; send text and "
                                       "image_url parts")
        question = "\n".join(t.strip() for t in texts if t.strip())
    if not images:
        raise UploadError(400, "no image in the user messages: MAEMI answers questions about micrographs; add a part "
                               '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}')
    if len(images) > MAX_IMAGES:
        raise UploadError(400, f"{len(images)} images in one conversation; at most {MAX_IMAGES}")
    if not question:
        raise UploadError(400, "the last user message has no text: ask a question about the image(s)")
    return images, question


_NUMBERED_QUESTION = re.compile(r"^\s*\d+\.\s*\[([^\]\s]+)\]\s*(\S.*?)\s*$", re.MULTILINE)


def structured_questions(response_format: ResponseFormat | None, text: str) -> list[tuple[str, str]] | None:
    """[(key, question)] when a JSON reply is asked for, None for free text. Only the teacher's layout can be
    answered as JSON (module docstring); any other JSON request is refused with the reason."""
    if response_format is None or response_format.type == "text":
        return None
    found = dict(_NUMBERED_QUESTION.findall(text))
    keys = list(found)
    if response_format.type == "json_schema":
        schema = response_format.json_schema.schema_ if response_format.json_schema else None
        try:
            answers = _AnswersSchema.model_validate(schema or {})
        except ValidationError:
            answers = _AnswersSchema()  # not the teacher's schema: refused below
        keys = list(answers.required or answers.properties)
        if any(k not in answers.properties or set(answers.properties[k].properties) != {"long", "short"}
               for k in keys):
            keys = []
    if not keys or any(k not in found for k in keys):
        raise UploadError(400, "MAEMI answers in free text; a JSON reply (response_format) is made only for numbered "
                               "questions '1. [key] question' with the micrograph_answers schema, as `maemi teach "
                               "--teacher openai` asks them")
    if len(keys) > MAX_JSON_QUESTIONS:
        raise UploadError(400, f"{len(keys)} numbered questions in one request; MAEMI answers at most "
                               f"{MAX_JSON_QUESTIONS} at a time: split them over several requests")
    return [(k, found[k]) for k in keys]


def completion(model: str, content: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> dict:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }


def completion_chunks(reply: dict):
    """The finished reply as server-sent events: role and content, then the finish reason, then [DONE]."""
    head = {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"], "model": reply["model"]}
    choice = reply["choices"][0]
    for delta, finish in ((choice["message"], None), ({}, choice["finish_reason"])):
        yield f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': delta, 'finish_reason': finish}]})}\n\n"
    yield "data: [DONE]\n\n"


async def _all_or_none(asks: list) -> list:
    """The results of all `asks`; when one fails (a full queue, a bad prompt), the others are cancelled, so their
    batch items are dropped instead of run for a request that is answered with the error already."""
    tasks = [asyncio.ensure_future(a) for a in asks]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


router = APIRouter(tags=["OpenAI-compatible"], route_class=GuardedRoute)


@router.get("/v1/models", summary="The served model")
async def list_models(request: Request) -> dict:
    state = request.app.state.maemi
    return {"object": "list", "data": [{"id": state.config.model_name, "object": "model",
                                        "created": state.started, "owned_by": "maemi"}]}


@router.post("/v1/chat/completions", summary="Chat completion about image(s) sent as data: URLs")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = request.app.state.maemi
    if body.n not in (None, 1):
        raise UploadError(400, f"n={body.n}: MAEMI returns one choice per request")
    sources, question = chat_query(body.messages)
    # Everything about the text is checked before any image is decoded or anything queued.
    json_reply = body.response_format is not None and body.response_format.type != "text"
    state.model.check_length(len(question), MAX_JSON_QUESTIONS if json_reply else 1)
    questions = structured_questions(body.response_format, question)
    for text in [question] if questions is None else [text for _, text in questions]:
        state.model.prompt(len(sources), text)
    limits = state.config.limits
    images = [await state.decodes.run(upload_cost(data, where, limits), state.model.image, data, where, limits, True)
              for data, where in sources]
    gen = state.model.generation(body.max_completion_tokens or body.max_tokens, body.temperature, body.top_p,
                                 body.seed)
    if questions is None:
        answers = [await state.model.ask(images, question, gen=gen)]
        content = answers[0].text
    else:
        answers = await _all_or_none([state.model.ask(images, text, gen=gen) for _, text in questions])
        content = json.dumps({key: {"long": a.text, "short": a.text} for (key, _), a in zip(questions, answers)},
                             ensure_ascii=False)
    cut = any(a.completion_tokens >= gen.max_new_tokens for a in answers)
    reply = completion(state.config.model_name, content, sum(a.prompt_tokens for a in answers),
                       sum(a.completion_tokens for a in answers), "length" if cut else "stop")
    # An extra field (OpenAI clients ignore it): which measured value each number of the answer is.
    reply["maemi"] = (answers[0].provenance if questions is None
                      else {key: a.provenance for (key, _), a in zip(questions, answers)})
    if body.stream:
        return StreamingResponse(completion_chunks(reply), media_type="text/event-stream")
    return reply
