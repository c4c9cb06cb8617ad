"""The two-round feedback demo (``scripts/feedback_rounds.py``), end to end on a tiny model.

The real demo trains the embedded model for minutes; here every training phase takes a few steps of a tiny
random model, so the test checks the loop, not the learning: round-1 answers written by the SFT model and
ranked by every simulated expert as the overlap says, a reward model and a DPO policy trained on the store
with the store snapshot in their lineage, and a head-to-head project of the two models judged by the experts,
its votes, lineage and summary as the store holds them.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import feedback_rounds  # noqa: E402

from feedback_app.headtohead import project_summary  # noqa: E402
from feedback_app.store import Store  # noqa: E402


@pytest.mark.slow
def test_two_rounds_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    steps = ["train.max_steps=2", "train.save_every=0", "train.eval_every=0",
             "tracking.backends=[none]"]
    s = feedback_rounds.Settings(
        workdir=tmp_path / "demo", model=str(tiny_model_dir), annotators=3, overlap=2, noise=0.15, prompts=4, k=2,
        temperature=1.0, max_new_tokens=12, heldout_limit=5, h2h_temperature=1.0, seed=3, aggregate="majority",
        # DPO at a large learning rate: two steps must change the tiny model's answers, or every head-to-head
        # prompt is answered identically by both sides and never shown.
        sft_overrides=steps, rm_overrides=steps, dpo_overrides=[*steps, "train.lr=0.05"])
    res = feedback_rounds.run(s)

    store = Store(s.workdir / "feedback.db")
    r1 = store.project(feedback_rounds.ROUND1)
    r2 = store.project(feedback_rounds.ROUND2)
    assert r1 is not None and r2 is not None and r2.is_head_to_head
    # Round 1: every prompt ranked by `overlap` experts, its answers written by the SFT model.
    judged = store.latest_judgments(r1.id)
    assert len(judged) == res.round1_judgments == 4 * 2
    assert {sj.user_name for sj in judged} <= {"expert01", "expert02", "expert03"}
    sft_weights = {c.model_sha256 for item in store.project_items(r1.id) for c in item.candidates}
    assert len(sft_weights) == 1 and len(next(iter(sft_weights))) == 64

    # The DPO model learned from this store: its lineage names the round-1 snapshot (the latest judgment).
    lineage = json.loads((s.workdir / "round2-dpo" / "lineage.json").read_text())
    text = json.dumps(lineage)
    assert "round-1" in text and str(max(sj.id for sj in judged)) in text

    # Round 2: baseline = SFT, challenger = DPO, judged by the experts; the summary is what the store says.
    rounds = store.rounds(r2.id)
    assert {r.weights_sha256 for r in rounds} >= sft_weights
    # The DPO round's answers trace back to the round-1 judgments (another project of the same store).
    dpo_round = next(r for r in rounds if r.store_snapshots)
    assert dpo_round.number == 2 and dpo_round.store_snapshots[0].project == "round-1"
    assert dpo_round.store_snapshots[0].latest_judgment_id == max(sj.id for sj in judged)
    summary = project_summary(store, r2)
    assert summary.counts.total == res.round2_votes > 0
    assert res.win_rate == summary.counts.win_rate
    assert (res.decisive_rate, res.decisive_interval) == (summary.counts.decisive_rate, summary.wilson)
    assert set(res.adherence) == {"round-1 SFT", "round-2 DPO"}
    text = (s.workdir / "summary.md").read_text()
    for needle in ("Lineage: round 1", "Head-to-head", "win rate", "Targets", "on decisive votes", "at most",
                   "policies.yaml (3 rules, stored with the project)",
                   "under 20 minutes"):
        assert needle in text
    assert set(json.loads((s.workdir / "summary.json").read_text())["times_s"]) == set(res.times)

    with pytest.raises(SystemExit, match="earlier demo"):
        feedback_rounds.run(s)


def test_seeds_share_one_sft_and_pool_the_votes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--seeds trains SFT once, runs every seed in its own folder from it, and pools the decisive votes."""
    trained: list[Path] = []

    def fake_sft(s: feedback_rounds.Settings, out: Path, log: Path) -> None:
        trained.append(out)
        (out / "model").mkdir(parents=True)

    # seed -> (wins, losses, adherence of round 1 and round 2)
    outcome = {0: (28, 17, (0.727, 0.833)), 1: (38, 13, (0.727, 0.894)), 2: (10, 10, (0.8, 0.7))}
    runs: list[feedback_rounds.Settings] = []

    def fake_run(s: feedback_rounds.Settings) -> feedback_rounds.Result:
        runs.append(s)
        wins, losses, (a1, a2) = outcome[s.seed]
        return feedback_rounds.Result(times={"x": 60.0}, wins=wins, losses=losses, decisive_rate=wins / (wins + losses),
                                      adherence={"round-1 SFT": a1, "round-2 DPO": a2})

    monkeypatch.setattr(feedback_rounds, "train_sft", fake_sft)
    monkeypatch.setattr(feedback_rounds, "run", fake_run)
    w = tmp_path / "sweep"
    lines = feedback_rounds.run_seeds(feedback_rounds.Settings(workdir=w), [0, 1, 2])

    assert trained == [w / "round1-sft"]
    assert [(s.seed, s.workdir, s.sft_model) for s in runs] == [
        (n, w / f"seed-{n}", w / "round1-sft") for n in (0, 1, 2)]
    pooled = next(line for line in lines if line.startswith("pooled"))
    # 76 of 116 decisive votes; Wilson 95%: (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)
    assert pooled.split()[1:] == ["76", "40", "65.5%", "[56.5%,", "73.5%]"]
    assert lines[-1] == ("round 2 adheres more than round 1 on 2 of 3 seeds; decisive win rate >= 70% on 1 of 3 "
                         "(lowest 50.0%, pooled 65.5%)")
    data = json.loads((w / "seeds.json").read_text())
    assert data["seeds"]["1"]["wins"] == 38 and (w / "seeds.md").read_text().splitlines()[0] == lines[0]

    # A second sweep in the same folder reuses the SFT model it finds there, and reads back a seed a run
    # finished there (its summary.json) instead of running it again.
    runs.clear()
    finished = feedback_rounds.Result(times={"x": 90.0}, round1_judgments=144, round2_votes=190,
                                      adherence={"round-1 SFT": 0.75, "round-2 DPO": 0.9}, win_rate=0.55,
                                      win_interval=(0.5, 0.6), decisive_rate=0.7, decisive_interval=(0.55, 0.82),
                                      wins=35, losses=15)
    (w / "seed-7").mkdir()
    (w / "seed-7" / "summary.json").write_text(json.dumps({
        "times_s": finished.times, "round1_judgments": 144, "round2_votes": 190, "adherence": finished.adherence,
        "win_rate": 0.55, "win_interval": [0.5, 0.6], "decisive_rate": 0.7, "decisive_interval": [0.55, 0.82],
        "wins": 35, "losses": 15, "settings": {k: str(v) for k, v in asdict(replace(
            feedback_rounds.Settings(workdir=w / "seed-7"), seed=7, sft_model=w / "round1-sft")).items()}}))
    assert feedback_rounds.read_result(w / "seed-7" / "summary.json") == finished
    lines = feedback_rounds.run_seeds(feedback_rounds.Settings(workdir=w), [2, 7])
    assert trained == [w / "round1-sft"] and [(s.seed, s.sft_model) for s in runs] == [(2, w / "round1-sft")]
    assert next(line for line in lines if line.startswith("pooled")).split()[1:3] == ["45", "25"]
    # A seed run under other settings is not pooled with these.
    with pytest.raises(SystemExit, match=r"other settings \(noise\)"):
        feedback_rounds.run_seeds(feedback_rounds.Settings(workdir=w, noise=0.3), [7])


def test_a_missing_sft_folder_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    s = feedback_rounds.Settings(workdir=tmp_path / "demo", sft_model=tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="no SFT output there"):
        feedback_rounds.run(s)
    assert not s.workdir.exists()


def test_the_demo_dpo_learning_rate_comes_first_so_dpo_set_overrides_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[feedback_rounds.Settings] = []
    monkeypatch.setattr(feedback_rounds, "run", lambda s: seen.append(s) or feedback_rounds.Result())
    assert feedback_rounds.main(["--workdir", str(tmp_path), "--dpo-set", "train.lr=1e-5",
                                 "--dpo-set", "beta=0.2"]) == 0
    assert seen[0].dpo_overrides == [*feedback_rounds.DPO_DEFAULTS, "train.lr=1e-5", "beta=0.2"]
    assert "train.lr=2e-5" in feedback_rounds.DPO_DEFAULTS
    # later overrides win, as `align dpo` applies them in order
    from alignment.config import parse_overrides
    merged = parse_overrides(seen[0].dpo_overrides)
    assert merged["train.lr"] == "1e-5" and merged["beta"] == 0.2
    assert merged["train.epochs"] == 1.25 and merged["train.max_steps"] == -1  # the demo's other defaults stay
    assert feedback_rounds.Settings().dpo_overrides == list(feedback_rounds.DPO_DEFAULTS)
