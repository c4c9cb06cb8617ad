"""Shared fixtures: a tiny Llama-style model with the real SmolLM2 tokenizer, and small data files.

Tests live in tiers, one folder each, and every test is marked with its folder's name:
``unit`` (no model: formulas, loaders, config, rules; seconds), ``training`` (tiny models trained and
evaluated by the phases, the pipeline and the launchers), ``app`` (the feedback store and the expert app,
through its handlers, HTTP and a real browser) and ``e2e`` (whole demos, the benchmark harness, two
simulated nodes). ``slow`` marks multi-process and real-model runs across tiers.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "training", "app", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, the folder it sits in; a test outside the tiers is an error, so
    `-m unit` and friends never silently miss one."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    from alignment.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, real_model_dir: Path) -> Path:
    """A 2-layer, 64-wide Llama with SmolLM2's tokenizer and chat template (about 3M parameters)."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(str(real_model_dir))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture()
def sft_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(48):
        rows.append({"messages": [
            {"role": "system", "content": "You are a support assistant."},
            {"role": "user", "content": f"Question number {i}: how do I reset item {i % 7}?"},
            {"role": "assistant", "content": f"Open settings, choose item {i % 7}, press reset. Ticket {i}."},
        ]})
    return write_jsonl(tmp_path / "sft.jsonl", rows)


@pytest.fixture()
def toy_preferences(tmp_path: Path) -> Path:
    """Chosen answers are polite, rejected ones rude: separable by a few tokens."""
    rng = random.Random(0)
    topics = ["my bill", "a claim", "my address", "the deductible", "a refund", "my password", "the app",
              "roadside help", "my policy", "a payment"]
    rows = []
    for i in range(120):
        topic = rng.choice(topics)
        prompt = f"Question {i}: can you help me with {topic}?"
        rows.append({"prompt": prompt,
                     "chosen": f"Certainly, I can help with {topic}. Thank you for asking.",
                     "rejected": f"No. Figure out {topic} yourself."})
    return write_jsonl(tmp_path / "prefs.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A one-score sequence classifier on the tiny config (random weights: scores differ, mean nothing)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-rm")
    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.num_labels = 1
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


def run_at_once(calls: Sequence[Callable[[], Any]]) -> list[BaseException]:
    """Run every call in a thread of its own, all released together (a barrier), and wait for them: the
    errors they raised, in no particular order (none when every call went through)."""
    import threading

    errors: list[BaseException] = []
    start = threading.Barrier(len(calls))

    def run(call: Callable[[], Any]) -> None:
        try:
            start.wait()
            call()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            errors.append(e)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def open_store_concurrently(url: str, n: int = 4) -> list[BaseException]:
    """Open the store at ``url`` from ``n`` threads at once, half with ``create=True`` (the server and CLI
    commands starting together on an old store): the errors raised, none when the upgrade runs once."""
    from feedback_app.store import Store

    return run_at_once([lambda create=(k % 2 == 0): Store(url, create=create).close() for k in range(n)])


# What each feedback-store schema version added, oldest first: downgrade_store undoes them to make a store
# that looks as an older release wrote it. A new schema version adds its line here.
SCHEMA_ADDED = {
    "2": ["DROP TABLE released_claims", "ALTER TABLE projects DROP COLUMN claim_ttl_minutes"],
    "3": ["DROP TABLE gold_items"],
    "4": ["DROP TABLE candidate_scores", "ALTER TABLE projects DROP COLUMN uncertain_first"],
    "5": ["ALTER TABLE candidates DROP COLUMN model_path", "ALTER TABLE candidates DROP COLUMN model_sha256"],
    "6": ["ALTER TABLE projects DROP COLUMN task", "ALTER TABLE projects DROP COLUMN baseline",
          "ALTER TABLE projects DROP COLUMN challenger"],
}


def downgrade_store(store: Any, version: str) -> None:
    """Make ``store`` look like one written at schema ``version``, before the store moved to Alembic: the
    revisions after the baseline (schema 6) undone by their own downgrades, Alembic's version table dropped,
    every later version's tables and columns dropped (newest first) and the version recorded, so opening it
    again must run the real upgrade."""
    from alembic import command
    from sqlalchemy import text

    from feedback_app import migrations
    from feedback_app.store import SCHEMA_VERSION, meta

    assert SCHEMA_VERSION == max(SCHEMA_ADDED, key=int), "list what the new schema version adds in SCHEMA_ADDED"
    with store.schema_write() as c:
        command.downgrade(migrations.config(c), migrations.BASELINE)
        c.execute(text("DROP TABLE alembic_version"))
        for added in sorted(SCHEMA_ADDED, key=int, reverse=True):
            if int(added) > int(version):
                for statement in SCHEMA_ADDED[added]:
                    c.execute(text(statement))
        c.execute(meta.update().where(meta.c.key == "schema_version").values(value=version))


def app_login(client: Any, user: str, password: str) -> None:
    """Sign ``user`` in through the app's login form on a test client (replacing any earlier session), as the
    simulated experts do."""
    from feedback_app.simulate import app_login as login

    client.cookies.clear()
    login(client, user, password)


def call_api(client: Any, api: str, data: list) -> str:
    """Gradio's HTTP API on a test client: start the event ``api`` with ``data``, return its result stream."""
    r = client.post(f"/gradio_api/call/{api}", json={"data": data})
    assert r.status_code == 200, r.text
    return client.get(f"/gradio_api/call/{api}/{r.json()['event_id']}").text
