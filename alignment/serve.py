"""`align serve MODEL`: an OpenAI-compatible chat endpoint for a trained model, on 127.0.0.1 by default.

``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as server-sent events or not), so the OpenAI
clients, LangChain and friends talk to a model trained here by pointing their base URL at it.

Requests are batched: one worker thread owns the model; it takes the first waiting request, waits up to
``max_wait_ms`` for more (at most ``max_batch``) and runs them through the generation engine
(:func:`alignment.generation.decode`) as one batch, grouped by their sampling settings (one decode call per
temperature/top-p pair). Streamed requests batch like the others: decode's ``on_step`` hook hands the engine
each step's tokens as they are drawn, and each request's new text is sent as it grows (decoded a piece at a
time, see :class:`_Detokenizer`). A request's ``max_tokens`` and stop strings cut its own answer; the hook
ends the batch when its last answer is done.

The answer to a prompt is what :func:`alignment.generation.generate` gives for it (same chat template, same
stop tokens, same decoding), so a greedy answer here equals the one `align eval` saw.
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from alignment import log
from alignment.config import ModelOptions
from alignment.errors import AlignError

_LOG = log.get_logger("serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


# ------------------------------------------------------------------------------------------------------------
# The request body (the subset of OpenAI's chat completion request this server honours; other fields are
# accepted and ignored, as clients send many, e.g. "user", "presence_penalty")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = 1
    stop: list[str] = Field(default_factory=list)  # OpenAI's one string or list, normalised once to a list
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported: send one request per answer")
        return n

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's (the model answers it)")
        return messages

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, stop: Any) -> Any:
        return [stop] if isinstance(stop, str) else [] if stop is None else stop

    @field_validator("stop")
    @classmethod
    def _stops(cls, stops: list[str]) -> list[str]:
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops


# ------------------------------------------------------------------------------------------------------------
# The batching engine


class _Detokenizer:
    """Text of a growing token sequence, decoded a piece at a time: each new token decodes only itself and the
    tokens since the last complete piece (with one piece before them as context, so a tokenizer that spells a
    word differently at the start of a text spells it as in the whole), not the whole answer again. A piece is
    taken only once it no longer ends in U+FFFD: a token may hold part of a multi-byte character whose rest
    comes in the next one."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read]: the last piece taken, decoded again as context for the next one
        self.read = 0  # ids[read:]: not in the text yet

    def add(self, token: int) -> str:
        """The text ``token`` completes ("" while it is part of an unfinished character, or a special token)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


@dataclass
class _Job:
    """One request in the engine: its prompt ids and limits in, its events out (read by the HTTP handler)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    stream: bool = False
    events: queue.Queue = field(default_factory=queue.Queue)
    ids: list[int] = field(default_factory=list)  # generated so far, the stop token included
    # The answer's text so far (leading whitespace dropped, as generate() strips it), kept only when it is
    # needed while decoding: to stream it or to find a stop string. Other answers are decoded once, at the end.
    detokenizer: _Detokenizer | None = None
    text: str = ""
    cut: int | None = None  # where the first stop string starts in text, once one has
    sent: int = 0  # characters of text already sent (streaming)
    done: bool = False  # answered (stop token, stop string, its max_tokens) or its client left


class Engine:
    """Owns the model; batches the requests :meth:`submit` hands it (see the module docstring)."""

    RECENT_BATCHES = 1000  # how many batch sizes :attr:`batch_sizes` keeps

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 bf16: str = "auto", seed: int = 0) -> None:
        import torch

        from alignment.data.chat import generation_eos_ids

        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.bf16 = bf16
        self.stop_ids = generation_eos_ids(tokenizer, model.generation_config)
        self._stops = set(self.stop_ids)
        self.device = next(model.parameters()).device
        # How many requests each recent decode call served, newest last (tests and operators read it); bounded,
        # since a server runs for as long as it is left running.
        self.batch_sizes: deque[int] = deque(maxlen=self.RECENT_BATCHES)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        torch.manual_seed(seed)
        self._worker = threading.Thread(target=self._loop, name="align-serve-engine", daemon=True)
        self._worker.start()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt as :func:`alignment.generation.generate` renders and tokenizes it."""
        from alignment.data.chat import render

        return self.tokenizer(render(self.tokenizer, messages, add_generation_prompt=True),
                              add_special_tokens=False)["input_ids"]

    def submit(self, job: _Job) -> _Job:
        if job.stream or job.stops:
            job.detokenizer = _Detokenizer(self.tokenizer)
        self._queue.put(job)
        return job

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = time.monotonic() + self.max_wait
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                jobs.append(job)
            groups: dict[tuple[float, float], list[_Job]] = {}
            for job in jobs:
                # decode samples every row with one temperature and top-p; greedy rows ignore top-p
                key = (job.temperature, job.top_p if job.temperature > 0 else 1.0)
                groups.setdefault(key, []).append(job)
            for (temperature, top_p), group in groups.items():
                try:
                    self.run_batch(group, temperature, top_p)
                except Exception as e:  # noqa: BLE001 - reported to each waiting request, the server stays up
                    _LOG.error(f"generation failed: {type(e).__name__}: {e}")
                    for job in group:
                        if not job.done:
                            job.done = True
                            job.events.put(("error", f"generation failed: {type(e).__name__}: {e}"))

    def run_batch(self, jobs: list[_Job], temperature: float, top_p: float) -> None:
        """One decode call for ``jobs`` (left-padded together); each job's events are sent as it goes. Called by
        the engine's worker thread only, so one decode runs at a time."""
        import torch

        from alignment.generation import decode
        from alignment.training import autocast, use_bf16

        self.batch_sizes.append(len(jobs))
        pad = self.tokenizer.pad_token_id
        width = max(len(j.prompt_ids) for j in jobs)
        ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])

        def on_step(rows: torch.Tensor, tokens: torch.Tensor) -> bool:
            for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
                self._push(jobs[row], token)
            # decode knows stop tokens only: without this it would run on to the batch's largest max_tokens for
            # rows whose answers were cut by a stop string or their own max_tokens, or whose client left
            return all(job.done for job in jobs)

        with autocast(use_bf16(self.bf16)):
            decode(self.model, ids.to(self.device), mask.to(self.device),
                   max_new_tokens=max(j.max_tokens for j in jobs), stop_ids=self.stop_ids, pad_id=pad,
                   temperature=temperature, top_p=top_p, on_step=on_step)
        for job in jobs:
            self._finish(job, "length")  # rows not finished by a stop ran to the batch's limit

    def _push(self, job: _Job, token: int) -> None:
        if job.done:
            return  # past its own max_tokens or stop string, or its client left: the batch runs on without it
        # generate() drops pad tokens from an answer unless pad is a stop token; so do we
        kept = token != self.tokenizer.pad_token_id or token in self._stops
        if kept:
            job.ids.append(token)
        if token in self._stops:
            self._finish(job, "stop")
            return
        if kept and job.detokenizer is not None:
            self._grow(job, job.detokenizer.add(token))
            if job.cut is not None:
                self._finish(job, "stop")
                return
        if len(job.ids) >= job.max_tokens:
            self._finish(job, "length")

    def _grow(self, job: _Job, piece: str) -> None:
        """Add ``piece`` to the job's text, look for its stop strings where the piece could complete one, and
        stream what can no longer change."""
        if not piece:
            return
        old = len(job.text)
        job.text += piece if job.text else piece.lstrip()
        found = [i for s in job.stops if (i := job.text.find(s, max(0, old - len(s) + 1))) >= 0]
        if found:
            job.cut = min(found)
            return
        if not job.stream:
            return
        # Hold back what may still change: a tail that may be the start of a stop string, and whitespace before
        # it (generate strips an answer's trailing whitespace, and so does a cut at a stop string). Measured from
        # the end, without copying the text.
        ready = len(job.text) - max((len(s) - 1 for s in job.stops), default=0)
        while ready > job.sent and job.text[ready - 1].isspace():
            ready -= 1
        if ready > job.sent:
            job.events.put(("delta", job.text[job.sent:ready]))
            job.sent = ready

    def _finish(self, job: _Job, reason: str) -> None:
        from alignment.generation import answer

        if job.done:
            return
        job.done = True
        if job.cut is not None:
            text, reason = job.text[: job.cut].strip(), "stop"
        else:
            text = answer(self.tokenizer, job.ids, self.stop_ids).text  # one decode of the whole answer
        if job.stream and len(text) > job.sent:
            job.events.put(("delta", text[job.sent:]))
            job.sent = len(text)
        job.events.put(("done", reason, len(job.ids), text))


# ------------------------------------------------------------------------------------------------------------
# The HTTP app


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": None}})


def create_app(engine: Engine, model_id: str, *, api_key: str | None = None, max_new_tokens: int = 256,
               max_new_tokens_limit: int = 2048, context_length: int | None = None) -> Any:
    """The FastAPI app serving ``engine`` as ``model_id``. ``max_new_tokens``: an answer's length when the
    request names none; ``max_new_tokens_limit``: the most a request may ask for; ``context_length``: the most
    tokens prompt and answer may take together (the model's positions), None for no check."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse

    app = FastAPI(title="align serve", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> Any:
        # OpenAI answers a malformed request with 400 and one message; name the field like its clients do
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return _error(400, f"{where}: {message}" if where else message, param=where or None)

    @app.middleware("http")
    async def authorize(request: Request, call_next: Any) -> Any:
        if api_key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                              kind="authentication_error")
        return await call_next(request)

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "align"}]}

    @app.post("/v1/chat/completions")
    def chat(body: ChatRequest) -> Any:
        limit = body.max_completion_tokens or body.max_tokens or max_new_tokens
        if limit > max_new_tokens_limit:
            return _error(400, f"max_tokens {limit} is above this server's limit of {max_new_tokens_limit} "
                               "(align serve --max-new-tokens-limit)", param="max_tokens")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt = engine.prompt_ids(messages)
        except Exception as e:  # noqa: BLE001 - a chat template refusing the messages is the caller's error
            return _error(400, f"the model's chat template rejected the messages: {e}", param="messages")
        if context_length is not None and len(prompt) + limit > context_length:
            return _error(400, f"the prompt ({len(prompt)} tokens) and max_tokens ({limit}) exceed the model's "
                               f"context of {context_length} tokens", param="messages")
        job = engine.submit(_Job(prompt, limit, body.temperature, body.top_p, body.stop, stream=body.stream))
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(job, completion_id, model_id, include_usage),
                                     media_type="text/event-stream")
        text, reason, tokens = "", "stop", 0
        while True:
            event = job.events.get()
            if event[0] == "error":
                return _error(500, event[1], kind="server_error")
            if event[0] == "done":
                _, reason, tokens, text = event
                break
        return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason, "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": tokens,
                          "total_tokens": len(prompt) + tokens}}

    return app


def _stream(job: _Job, completion_id: str, model_id: str, include_usage: bool) -> Iterator[str]:
    """Server-sent events in OpenAI's chat.completion.chunk shape, then ``data: [DONE]``."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], reason: str | None = None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                                "model": model_id,
                                "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": reason,
                                                              "logprobs": None}]}
        if usage:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = job.events.get()
            if event[0] == "delta":
                yield chunk({"content": event[1]})
            elif event[0] == "error":
                yield f"data: {json.dumps({'error': {'message': event[1], 'type': 'server_error'}})}\n\n"
                break
            else:
                _, reason, tokens, _ = event
                yield chunk({}, reason)
                if include_usage:
                    prompt = len(job.prompt_ids)
                    yield chunk({}, usage={"prompt_tokens": prompt, "completion_tokens": tokens,
                                           "total_tokens": prompt + tokens})
                break
        yield "data: [DONE]\n\n"
    finally:
        job.done = True  # a client that left: the engine stops decoding its text (and its batch, if it was the last)


# ------------------------------------------------------------------------------------------------------------
# The command


def load_engine(model: str, *, options: ModelOptions | None = None, max_batch: int = 8,
                max_wait_ms: float = 5.0) -> tuple[Engine, int | None]:
    """The model (an adapter merged into its base) on the GPU when there is one, in an engine; and its context
    length."""

    from alignment.modeling import load_causal_lm, load_tokenizer, on_inference_device, resolve_model

    path = resolve_model(model)
    lm = on_inference_device(load_causal_lm(path, merge_adapter=True, options=options))
    tokenizer = load_tokenizer(path, options)
    context = getattr(lm.config, "max_position_embeddings", None)
    return Engine(lm, tokenizer, max_batch=max_batch, max_wait_ms=max_wait_ms), context


def serve_command(model: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 8,
                  max_wait_ms: float = 5.0, max_new_tokens: int = 256, max_new_tokens_limit: int = 2048,
                  api_key: str | None = None, model_name: str | None = None,
                  options: ModelOptions | None = None) -> int:
    """The `align serve` command: load ``model`` and serve it until interrupted."""
    import uvicorn

    if max_new_tokens > max_new_tokens_limit:
        raise AlignError(f"--max-new-tokens {max_new_tokens} is above --max-new-tokens-limit {max_new_tokens_limit}")
    if host not in LOOPBACK:
        _LOG.warning(
            f"WARNING: serving on {host}, reachable from other machines"
            + (" with NO API KEY: anyone who can reach this port can use the model. Pass --api-key (or set "
               "ALIGN_API_KEY) or bind 127.0.0.1" if api_key is None else "; requests need the API key")
            + ". There is no TLS: put a reverse proxy in front for anything but a trusted network.")
    engine, context = load_engine(model, options=options, max_batch=max_batch, max_wait_ms=max_wait_ms)
    name = model_name or str(model).rstrip("/").split("/")[-1] or "model"
    app = create_app(engine, name, api_key=api_key, max_new_tokens=max_new_tokens,
                     max_new_tokens_limit=max_new_tokens_limit, context_length=context)
    shown = f"[{host}]" if ":" in host else host
    _LOG.info(f"serving '{name}' on http://{shown}:{port}/v1 (OpenAI-compatible; Ctrl-C stops)")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        engine.close()
    return 0
