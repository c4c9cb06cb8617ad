"""`align serve`: the OpenAI-compatible endpoint answers as generate() does, streams the same text, batches
concurrent requests into one decode call and refuses bad requests with a message."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_at_once

PROMPT = [{"role": "user", "content": "How do I reset my password?"}]


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def talkative_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger random weights: its greedy answers are many different words (the default
    initialisation answers newlines only, which leaves nothing to compare)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("talkative")
    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.initializer_range = 0.2
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig.from_pretrained(str(tiny_model_dir))
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def engine(talkative_dir: Path) -> Iterator[Any]:
    from alignment.serve import load_engine

    eng, _ = load_engine(str(talkative_dir), max_batch=8, max_wait_ms=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def client(engine: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from alignment.serve import create_app

    with TestClient(create_app(engine, "tiny", max_new_tokens=24, max_new_tokens_limit=64,
                               context_length=1024)) as c:
        yield c


def expected(engine: Any, max_new_tokens: int = 24) -> Any:
    from alignment.generation import generate

    return generate(engine.model, engine.tokenizer, [PROMPT], max_new_tokens=max_new_tokens, progress=False)[0]


def sse(text: str) -> list[Any]:
    """The data payloads of a server-sent event stream (JSON decoded; the final [DONE] as the string)."""
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def test_models_lists_the_served_model(client: Any) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["tiny"]


def test_greedy_answer_equals_generate(client: Any, engine: Any) -> None:
    want = expected(engine)
    r = client.post("/v1/chat/completions", json={"model": "tiny", "messages": PROMPT, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want.text}
    assert choice["finish_reason"] == ("stop" if want.finished else "length")
    prompt_tokens = len(engine.prompt_ids(PROMPT))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": want.num_tokens,
                             "total_tokens": prompt_tokens + want.num_tokens}


def test_streamed_chunks_concatenate_to_the_same_text(client: Any, engine: Any) -> None:
    want = expected(engine)
    r = client.post("/v1/chat/completions", json={"messages": PROMPT, "temperature": 0, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == want.text
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1  # streamed
    finals = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals == ["stop" if want.finished else "length"]
    assert chunks[-1]["usage"]["completion_tokens"] == want.num_tokens


def test_max_tokens_and_stop_strings_cut_the_answer(client: Any, engine: Any) -> None:
    short = expected(engine, max_new_tokens=3)
    r = client.post("/v1/chat/completions", json={"messages": PROMPT, "temperature": 0, "max_tokens": 3}).json()
    assert r["choices"][0]["message"]["content"] == short.text
    assert r["usage"]["completion_tokens"] == short.num_tokens
    assert r["choices"][0]["finish_reason"] == ("stop" if short.finished else "length")

    full = expected(engine).text
    if len(full) < 8:
        pytest.skip("the tiny model's answer is too short to cut")
    stop = full[4:7]
    want = full[: full.find(stop)].strip()
    calls: list[int] = []
    hook = engine.model.register_forward_hook(lambda *_: calls.append(1))
    for stream in (False, True):
        calls.clear()
        r = client.post("/v1/chat/completions", json={"messages": PROMPT, "temperature": 0, "stop": [stop],
                                                      "stream": stream})
        # the batch ends with its last answer, not at max_tokens (24): a forward pass per token up to the stop
        assert len(calls) < 24 / 2, len(calls)
        if stream:
            chunks = [c for c in sse(r.text)[:-1] if c["choices"]]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            reason = chunks[-1]["choices"][0]["finish_reason"]
        else:
            text, reason = r.json()["choices"][0]["message"]["content"], r.json()["choices"][0]["finish_reason"]
        assert (text, reason) == (want, "stop")
    hook.remove()


def test_concurrent_requests_share_one_batch(talkative_dir: Path) -> None:
    from alignment.generation import generate
    from alignment.serve import create_app, load_engine

    # The first request waits (up to a minute) for a second one to fill the batch of two, so both are served by
    # one decode call whatever the threads' timing; a one-request batch would show in batch_sizes.
    eng, _ = load_engine(str(talkative_dir), max_batch=2, max_wait_ms=60_000)
    # in float32: under bf16 (what `auto` picks on a CPU with fast bf16) a padded batch rounds differently from a
    # prompt alone, and a random tiny model's near-flat logits then pick another greedy token a dozen tokens in
    eng.bf16 = "false"
    prompts = [PROMPT, [{"role": "user", "content": "A different, rather longer question about my bill?"}]]
    answers: dict[int, Any] = {}
    try:
        with running(create_app(eng, "tiny", max_new_tokens=16)) as url:
            def ask(i: int) -> None:
                answers[i] = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                                        json={"messages": prompts[i], "temperature": 0, "stream": i == 1})
            assert run_at_once([lambda i=i: ask(i) for i in range(2)]) == []
    finally:
        eng.close()
    assert list(eng.batch_sizes) == [2]
    assert all(a.status_code == 200 for a in answers.values())
    # each answer is generate()'s for its prompt alone: sharing a batch (and its padding) changes no answer
    want = [generate(eng.model, eng.tokenizer, [p], max_new_tokens=16, bf16="false", progress=False)[0]
            for p in prompts]
    assert len({w.text for w in want}) == 2 and all(w.text for w in want)  # two different, non-empty answers
    plain = answers[0].json()
    assert plain["choices"][0]["message"]["content"] == want[0].text
    assert plain["usage"]["completion_tokens"] == want[0].num_tokens
    events = sse(answers[1].text)
    assert events[-1] == "[DONE]"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in events[:-1] if c["choices"])
    assert streamed == want[1].text


def test_streamed_text_is_decoded_a_piece_at_a_time(talkative_dir: Path) -> None:
    """Multi-byte characters span several byte-level tokens: a piece is sent only once it is whole (never a
    U+FFFD), the pieces add up to the whole decode, and each token decodes a few tokens, not the answer so far."""
    from transformers import AutoTokenizer

    from alignment.serve import _Detokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(talkative_dir))
    text = "Größe: 東京タワー 🚀🚀 naïve café, ok? " * 8
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert len(ids) > len(text.split()) * 2  # the characters do span several tokens
    lengths: list[int] = []
    decode = tokenizer.decode
    tokenizer.decode = lambda tokens, **kw: lengths.append(len(tokens)) or decode(tokens, **kw)  # type: ignore[method-assign]
    stream = _Detokenizer(tokenizer)
    pieces = [stream.add(t) for t in ids]
    assert "".join(pieces) == decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert max(lengths) <= 8, max(lengths)  # the longest character's tokens and the piece before it


def test_bad_requests_get_a_400_with_a_message(client: Any) -> None:
    cases = [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": PROMPT, "n": 2}, "n=1"),
        ({"messages": [*PROMPT, {"role": "assistant", "content": "hi"}]}, "last message"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": PROMPT, "temperature": 5}, "temperature"),
        ({"messages": PROMPT, "max_tokens": 0}, "max_tokens"),
        ({"messages": PROMPT, "max_tokens": 65}, "limit of 64"),
        ({"messages": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ]
    for body, words in cases:
        r = client.post("/v1/chat/completions", json=body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["error"]["message"], (body, r.json())
    r = client.post("/v1/chat/completions", content=b"not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"]


def test_api_key_is_required_when_set(engine: Any) -> None:
    from fastapi.testclient import TestClient

    from alignment.serve import create_app

    with TestClient(create_app(engine, "tiny", api_key="s3cret", max_new_tokens=4)) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/v1/chat/completions", json={"messages": PROMPT, "temperature": 0},
                   headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200, r.text


def test_serving_on_all_interfaces_warns(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from alignment.serve import serve_command

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    assert serve_command(str(tiny_model_dir), host="0.0.0.0", port=8123) == 0
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8123
    assert "NO API KEY" in capsys.readouterr().out


def test_an_adapter_is_served_merged(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from fastapi.testclient import TestClient
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.serve import create_app, load_engine

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False,
                                    task_type="CAUSAL_LM")).save_pretrained(str(tmp_path))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(tmp_path))
    eng, context = load_engine(str(tmp_path))
    try:
        assert not isinstance(eng.model, PeftModel) and context == 1024
        with TestClient(create_app(eng, "adapter", max_new_tokens=4)) as c:
            r = c.post("/v1/chat/completions", json={"messages": PROMPT, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        eng.close()
