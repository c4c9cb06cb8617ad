"""`align serve MODEL`: an OpenAI-compatible chat endpoint for a trained model, on 127.0.0.1 by default.

``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as server-sent events or not), so the OpenAI
clients, LangChain and friends talk to a model trained here by pointing their base URL at it.

Requests are batched: one worker thread owns the model; it takes the first waiting request, waits up to
``max_wait_ms`` for more (at most ``max_batch``) and runs them through the generation engine
(:func:`alignment.generation.decode`) as one batch, grouped by their sampling settings (one decode call per
temperature/top-p pair). Streamed requests batch like the others: the engine's per-step tokens are
observed as they are drawn (see :class:`_StepObserver`) and each request's new text is sent as it grows.
A request's ``max_tokens`` and stop strings cut its own answer; the batch ends when its last answer does.

The answer to a prompt is what :func:`alignment.generation.generate` gives for it (same chat template, same
stop tokens, same decoding), so a greedy answer here equals the one `align eval` saw.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import queue
import threading
import time
import uuid
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
    stop: str | list[str] | None = None
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

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stop

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# ------------------------------------------------------------------------------------------------------------
# The batching engine


@dataclass
class _Job:
    """One request in the engine: its prompt ids and limits in, its events out (read by the HTTP handler)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stops: list[str]
    events: queue.Queue = field(default_factory=queue.Queue)
    ids: list[int] = field(default_factory=list)  # generated so far, the stop token included
    sent: int = 0  # characters of text already sent (streaming)
    done: bool = False  # answered (stop token, stop string, its max_tokens) or its client left


_observing = threading.local()  # the observer of the decode call running on this thread, if any
_hook_lock = threading.Lock()


def _install_step_hook() -> None:
    """Wrap :func:`alignment.generation.next_tokens` (once per process) so that a decode call running on a thread
    that set an observer reports each step's tokens to it; other threads' calls (a generate() elsewhere in the
    process) pass straight through. decode has no per-step callback of its own; this gives it one from outside."""
    from alignment import generation

    with _hook_lock:
        if getattr(generation.next_tokens, "_serve_hook", False):
            return
        original = generation.next_tokens

        def next_tokens(logits: Any, temperature: float, top_p: float) -> Any:
            token = original(logits, temperature, top_p)
            observer = getattr(_observing, "observer", None)
            if observer is not None:
                observer.step(token)
            return token

        next_tokens._serve_hook = True  # type: ignore[attr-defined]
        generation.next_tokens = next_tokens


class _BatchDone(Exception):
    """Raised from inside decode once every request of its batch is answered: decode would otherwise run on to
    the batch's largest max_tokens for rows whose answers were already cut (stop strings, smaller max_tokens,
    clients that left), since it knows only stop tokens."""


class _StepObserver:
    """Sees each step's new tokens while :func:`alignment.generation.decode` runs on this thread. A row leaves
    decode's batch after its stop token; the observer drops it the same way, so the i-th token of a step
    belongs to the i-th row still alive."""

    def __init__(self, rows: int, stop_ids: set[int], on_tokens: Any, all_done: Any) -> None:
        self.alive = list(range(rows))
        self.stop_ids = stop_ids
        self.on_tokens = on_tokens
        self.all_done = all_done

    def step(self, token: Any) -> None:
        values = token.tolist()
        self.on_tokens(list(zip(self.alive, values, strict=True)))
        self.alive = [row for row, t in zip(self.alive, values, strict=True) if t not in self.stop_ids]
        if self.all_done():
            raise _BatchDone

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        _install_step_hook()
        _observing.observer = self
        try:
            yield
        finally:
            _observing.observer = None


class Engine:
    """Owns the model; batches the requests :meth:`submit` hands it (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 bf16: str = "auto", seed: int = 0) -> None:
        import torch

        from alignment.data.chat import generation_eos_ids

        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_batch, self.max_wait = max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.bf16 = bf16
        self.stop_ids = generation_eos_ids(tokenizer, model.generation_config)
        self.device = next(model.parameters()).device
        self.batch_sizes: list[int] = []  # one entry per decode call: how many requests it served (tests read it)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._lock = threading.Lock()  # one decode at a time even if a caller drives run_batch directly
        torch.manual_seed(seed)
        self._worker = threading.Thread(target=self._loop, name="align-serve-engine", daemon=True)
        self._worker.start()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt as :func:`alignment.generation.generate` tokenizes it."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def submit(self, job: _Job) -> _Job:
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
        """One decode call for ``jobs`` (left-padded together); each job's events are sent as it goes."""
        import torch

        from alignment.generation import decode
        from alignment.training import autocast, use_bf16

        with self._lock:
            self.batch_sizes.append(len(jobs))
            pad = self.tokenizer.pad_token_id
            width = max(len(j.prompt_ids) for j in jobs)
            ids = torch.tensor([[pad] * (width - len(j.prompt_ids)) + j.prompt_ids for j in jobs])
            mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in jobs])
            stops = set(self.stop_ids)

            def on_tokens(pairs: list[tuple[int, int]]) -> None:
                for row, token in pairs:
                    self._push(jobs[row], token, stops)

            observer = _StepObserver(len(jobs), stops, on_tokens, lambda: all(j.done for j in jobs))
            with contextlib.suppress(_BatchDone), observer.installed(), autocast(use_bf16(self.bf16)):
                decode(self.model, ids.to(self.device), mask.to(self.device),
                       max_new_tokens=max(j.max_tokens for j in jobs), stop_ids=torch.tensor(self.stop_ids),
                       pad_id=pad, temperature=temperature, top_p=top_p)
            for job in jobs:
                self._finish(job, "length")  # rows not finished by a stop ran to the batch's limit

    def _push(self, job: _Job, token: int, stops: set[int]) -> None:
        if job.done:
            return  # past its own max_tokens or stop string, or its client left: the batch runs on without it
        # generate() drops pad tokens from an answer unless pad is a stop token; so do we
        if token != self.tokenizer.pad_token_id or token in stops:
            job.ids.append(token)
        if token in stops:
            self._finish(job, "stop")
            return
        text, cut = self._text(job)
        if cut:
            self._finish(job, "stop")
            return
        # Hold back what may still change: trailing whitespace (generate strips it), a partial UTF-8
        # character, and a tail that may be the start of a stop string.
        ready = text.rstrip().rstrip("\ufffd")
        hold = max((len(s) - 1 for s in job.stops), default=0)
        ready = ready[: max(job.sent, len(ready) - hold)] if hold else ready
        if len(ready) > job.sent:
            job.events.put(("delta", ready[job.sent:]))
            job.sent = len(ready)
        if len(job.ids) >= job.max_tokens:
            self._finish(job, "length")

    def _text(self, job: _Job) -> tuple[str, bool]:
        """The answer so far as generate() decodes it (special tokens dropped, leading space stripped), cut at
        the first stop string; True when one was found."""
        text = self.tokenizer.decode(job.ids, skip_special_tokens=True).lstrip()
        cuts = [i for i in (text.find(s) for s in job.stops) if i >= 0]
        return (text[: min(cuts)], True) if cuts else (text, False)

    def _finish(self, job: _Job, reason: str) -> None:
        if job.done:
            return
        job.done = True
        text, cut = self._text(job)
        text = text.strip()
        if len(text) > job.sent:
            job.events.put(("delta", text[job.sent:]))
            job.sent = len(text)
        job.events.put(("done", "stop" if cut else reason, len(job.ids), text))


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
    app.state.engine = engine
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
        job = engine.submit(_Job(prompt, limit, body.temperature, body.top_p, body.stops()))
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
    import torch

    from alignment.modeling import load_causal_lm, load_tokenizer, resolve_model

    path = resolve_model(model)
    lm = load_causal_lm(path, merge_adapter=True, options=options)
    if torch.cuda.is_available():
        lm = lm.to("cuda")
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
