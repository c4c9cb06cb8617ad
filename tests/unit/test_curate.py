"""`align data curate` and `data.curate`: planted near duplicates, clusters of separated topics, retrieval around
seeds, the curated copy's format, and bad settings refused in one line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from alignment.cli import main
from alignment.config import CurateConfig, SFTConfig, load_config, to_dict
from alignment.data.curate import (
    CurateOptions,
    TfidfEmbedder,
    cluster,
    curate_file,
    default_clusters,
    jaccard,
    near_duplicates,
    report_paths,
    retrieve,
    shingles,
)
from alignment.errors import AlignError
from alignment.pipeline import comparable

TOPICS = {
    "baking": "bread oven flour dough yeast crust knead loaf bake sourdough butter sugar".split(),
    "taxes": "tax refund deduction income filing return irs credit audit bracket payroll form".split(),
    "python": "python function list dict import module class exception loop variable string pandas".split(),
}


def sentence(seed: int, n: int = 30) -> str:
    """A 30-word text of common words, different for each seed."""
    rng = random.Random(seed)
    words = "the a of to and in is it you that he was for on are with as his they be at one have this from".split()
    return " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(n))


def topic_prompts(per_topic: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(topic, "how do I " + " ".join(rng.sample(words, 6)) + "?")
            for topic, words in TOPICS.items() for _ in range(per_topic)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def change_word(text: str, at: int, new: str = "CHANGED") -> str:
    words = text.split()
    words[at] = new
    return " ".join(words)


# ----------------------------------------------------------------------------------------- near duplicates


def test_shingles_ignore_case_and_punctuation():
    assert np.array_equal(shingles("Hello, World! How are you?"), shingles("hello world how are  you"))
    assert len(shingles("two words", 3)) == 1  # shorter than a shingle: the whole text is one


def test_planted_near_duplicates_removed_with_exact_groups():
    a, b, c, d = sentence(1), sentence(2), sentence(3), sentence(4)
    texts = [
        a,                                                  # 0 kept
        b,                                                  # 1 kept
        change_word(a, 15),                                 # 2 ~ a: one word changed mid-text
        a.upper().replace(" ", ", ") + "!",                 # 3 ~ a: case and punctuation only
        c,                                                  # 4 kept
        change_word(b, 0),                                  # 5 ~ b: the first word changed
        change_word(change_word(change_word(d, 5), 15), 25),  # 6 kept: d is later, and 6 is d less 3 words
        d,                                                  # 7 kept: Jaccard with 6 is 19/37
    ]
    result = near_duplicates(texts, threshold=0.8, shingle=3)
    assert jaccard(shingles(texts[6], 3), shingles(d, 3)) < 0.8
    assert result.keep == [0, 1, 4, 6, 7]
    assert {k: [i for i, _ in members] for k, members in result.groups.items()} == {0: [2, 3], 1: [5]}
    sims = dict(result.groups[0])
    assert sims[3] == 1.0 and sims[2] == pytest.approx(25 / 31)  # 28 shingles, 3 replaced on each side


def test_distinct_texts_sharing_a_topic_are_kept():
    texts = [sentence(i) for i in range(40)]
    assert near_duplicates(texts).keep == list(range(40))


# ----------------------------------------------------------------------------------------- clusters, retrieval


def test_clusters_recover_separated_topics():
    from sklearn.metrics import adjusted_rand_score

    rows = topic_prompts()
    texts = [t for _, t in rows]
    x = TfidfEmbedder().fit(texts).embed(texts)
    assert np.allclose(np.linalg.norm(x, axis=1), 1)
    labels, centroids = cluster(x, 3, seed=0)
    assert adjusted_rand_score([topic for topic, _ in rows], labels) == 1.0
    assert centroids.shape == (3, x.shape[1])


def test_default_clusters_follow_the_data_size():
    assert default_clusters(1) == 1 and default_clusters(8) == 2 and default_clusters(5000) == 50


def test_retrieval_returns_the_planted_nearest():
    rows = topic_prompts()
    texts = [t for _, t in rows] + ["how do I file my income tax refund form with the irs", "bake sourdough bread"]
    embedder = TfidfEmbedder().fit(texts)
    x = embedder.embed(texts)
    kept, best = retrieve(x, embedder.embed(["filing an income tax refund with the irs", "sourdough bread to bake"]),
                          top_k=1)
    assert kept == [len(texts) - 2, len(texts) - 1]
    assert best.shape == (1, 2) and (best > 0.5).all()


# ----------------------------------------------------------------------------------------- files and the CLI


def sft_rows() -> list[dict]:
    rows = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": f"answer {i}"}],
             "source": f"s{i}"} for i, (_, t) in enumerate(topic_prompts(per_topic=6))]
    first = rows[0]["messages"][0]["content"]
    rows.append({"messages": [{"role": "user", "content": first.upper() + "!!"},
                              {"role": "assistant", "content": "other answer"}], "source": "dup"})
    rows.append(dict(rows[3]))  # an exact repeat
    return rows


def test_curate_file_keeps_the_format_and_writes_the_report(tmp_path):
    rows = sft_rows()
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"prompt": "sourdough bread loaf in the oven"}])
    out = tmp_path / "out" / "curated.jsonl"
    report = curate_file(str(data), "sft", str(out), CurateConfig(seeds=str(seeds), top_k=4))
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == 4 == report["kept"]
    assert all(r in rows[:18] for r in written)  # as written: messages and the source column, in file order
    assert {r["source"] for r in written} <= {f"s{i}" for i in range(6)}  # the baking prompts
    assert report["removed"] == {"duplicate": 1, "near_duplicate": 1, "not_retrieved": 14}
    assert report["near_duplicate_groups"][0]["kept_line"] == 1
    assert report["near_duplicate_groups"][0]["removed_lines"] == [19]
    report_json, plot = report_paths(out)
    assert json.loads(report_json.read_text())["kept"] == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    clusters = json.loads(report_json.read_text())["clusters"]
    assert sum(c["size"] for c in clusters) == 18 and sum(c["retrieved"] for c in clusters) == 4
    assert all({"size", "diversity", "representative", "representative_line"} <= set(c) for c in clusters)


def test_cli_curates_and_refuses_bad_settings(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", sft_rows())
    out = tmp_path / "c.jsonl"
    assert main(["data", "curate", str(data), "--kind", "sft", "--out", str(out), "--clusters", "3"]) == 0
    assert "20 records -> 18 kept" in capsys.readouterr().out
    bad = [
        (["--near-dup-threshold", "1.5"], "--near-dup-threshold"),
        (["--top-k", "3"], "--top-k"),
        (["--seeds", str(data), "--top-k", "0"], "--top-k"),
        (["--model", "m"], "--model"),
        (["--clusters", "-1"], "--clusters"),
        (["--shingle", "0"], "--shingle"),
        (["--embed", "minilm", "--out", str(tmp_path / "x.txt")], "--out"),
    ]
    for extra, name in bad:
        assert main(["data", "curate", str(data), "--kind", "sft", "--out", str(out), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and name in err and "Traceback" not in err, (extra, err)


def test_near_dup_threshold_none_keeps_near_duplicates(tmp_path, capsys):
    data = write_jsonl(tmp_path / "data.jsonl", sft_rows())
    out = tmp_path / "c.jsonl"
    assert main(["data", "curate", str(data), "--kind", "sft", "--out", str(out), "--near-dup-threshold", "none",
                 "--clusters", "0"]) == 0
    assert len(out.read_text().splitlines()) == 19


# ----------------------------------------------------------------------------------------- the recipe section


def test_recipe_section_is_checked_and_fingerprinted_only_when_set(tmp_path):
    base = {"model": "m", "data.train": str(tmp_path / "d")}
    assert "curate" not in comparable(to_dict(load_config(SFTConfig, None, base)))["data"]
    cfg = load_config(SFTConfig, None, {**base, "data.curate": {"near_dup_threshold": 0.9}})
    assert comparable(to_dict(cfg))["data"]["curate"]["near_dup_threshold"] == 0.9
    with pytest.raises(AlignError) as e:
        load_config(SFTConfig, None, {**base, "data.curate": {"near_dup_threshold": 0}})
    assert e.value.field == "data.curate.near_dup_threshold"


def test_sft_training_data_is_curated_before_the_split(tmp_path):
    from alignment.sft import load_sft_records

    data = write_jsonl(tmp_path / "data.jsonl", sft_rows())
    plain = load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.split": {"train": 1.0}})
    curated = load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.split": {"train": 1.0},
                                            "data.curate": {}})
    assert len(load_sft_records(plain)[0]) == 19  # data.dedup removed the exact repeat
    train = load_sft_records(curated)[0]
    assert len(train) == 18 and all(r["messages"][1]["content"] != "other answer" for r in train)



def test_curation_keeps_the_repeats_the_phase_data_dedup_keeps(tmp_path):
    """data.dedup: none (or exact) is what the phase trains on: curation with no near-duplicate threshold removes
    no repeat of its own; the command's --dedup says what it removes first."""
    from alignment.sft import load_sft_records

    rows = [{"messages": [{"role": "user", "content": f"question number {i} about the policy"},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(10)]
    spaced = {"messages": [{"role": "user", "content": "question  number 3 about the policy "},
                           {"role": "assistant", "content": "answer 3"}]}
    data = write_jsonl(tmp_path / "data.jsonl", [*rows, rows[2], spaced])
    for dedup, expected in (("none", 12), ("exact", 11), ("whitespace", 10)):
        cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.split": {"train": 1.0},
                                            "data.dedup": dedup, "data.curate": {"near_dup_threshold": None,
                                                                                 "clusters": 0}})
        assert len(load_sft_records(cfg)[0]) == expected, dedup
        out = tmp_path / f"{dedup}.jsonl"
        assert main(["data", "curate", str(data), "--kind", "sft", "--out", str(out), "--near-dup-threshold",
                     "none", "--clusters", "0", "--dedup", dedup]) == 0
        assert len(out.read_text().splitlines()) == expected, dedup
        report = json.loads((tmp_path / f"{dedup}.curation.json").read_text())
        assert report["settings"]["dedup"] == dedup and report["removed"]["duplicate"] == 12 - expected

def test_pairs_of_one_prompt_are_one_unit_in_preference_data(tmp_path):
    """Several pairs of one prompt are the data's structure, not near duplicates of each other: all are kept,
    while a reworded copy of that prompt goes with all of its pairs."""
    prompts = [t for _, t in topic_prompts(per_topic=4)]
    rows = [{"prompt": p, "chosen": f"good {i}", "rejected": f"bad {i}"} for i, p in enumerate(prompts)]
    rows += [{"prompt": prompts[0], "chosen": "good again", "rejected": "bad again"},  # a second pair, same prompt
             {"prompt": prompts[5].upper() + "!", "chosen": "g", "rejected": "b"},  # near duplicate of prompt 5
             {"prompt": prompts[5].upper() + "!", "chosen": "g2", "rejected": "b2"}]  # ... and its second pair
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    report = curate_file(str(data), "preference", str(tmp_path / "out.jsonl"), CurateConfig(),
                         CurateOptions(clusters=0))
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == rows[:13]  # both pairs of prompt 0 kept, in file order
    assert report["removed"] == {"duplicate": 0, "near_duplicate": 2}
    (group,) = report["near_duplicate_groups"]
    assert (group["kept_line"], group["removed"], group["removed_lines"]) == (6, 2, [14, 15])


def test_a_phase_writes_its_curation_report_and_clusters_plot(tmp_path):
    from alignment.data.curate import PHASE_PLOT, PHASE_REPORT
    from alignment.sft import load_sft_splits

    data = write_jsonl(tmp_path / "data.jsonl", sft_rows())
    cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.split": {"train": 1.0},
                                        "data.curate": {"clusters": 3}})
    out = tmp_path / "phase"
    train = load_sft_splits(cfg, out)[0]
    report = json.loads((out / PHASE_REPORT).read_text())
    assert report["kept"] == len(train) == 18 and report["removed"] == {"duplicate": 0, "near_duplicate": 1}
    assert len(report["clusters"]) == 3 and sum(c["size"] for c in report["clusters"]) == 18
    assert (out / PHASE_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # without a folder (a process other than the main one) nothing is written, and the data is the same
    assert load_sft_splits(cfg, None)[0] == train
    with pytest.raises(AlignError) as e:
        load_config(SFTConfig, None, {"model": "m", "data.train": str(data), "data.curate": {"clusters": -1}})
    assert e.value.field == "data.curate.clusters"


def test_the_seed_prompts_file_is_part_of_the_data_fingerprint(tmp_path):
    from alignment.data.fingerprint import config_sources, data_fingerprint

    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"prompt": "bread"}])
    cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(tmp_path / "d.jsonl"),
                                        "data.curate": {"seeds": str(seeds)}})
    before = data_fingerprint(config_sources(cfg))
    write_jsonl(seeds, [{"prompt": "taxes"}])
    after = data_fingerprint(config_sources(cfg))
    assert before["data.curate.seeds"] != after["data.curate.seeds"] and before["data.train"] == after["data.train"]


def _pairs_with_a_reworded_prompt(tmp_path: Path) -> tuple[Path, list[dict]]:
    prompts = [t for _, t in topic_prompts(per_topic=8)]
    rows = [{"prompt": p, "chosen": f"good {i}", "rejected": f"bad {i}"} for i, p in enumerate(prompts)]
    rows.append({"prompt": prompts[2], "chosen": "good again", "rejected": "bad again"})  # a second pair of prompt 2
    rows.append({"prompt": prompts[7].upper() + "!", "chosen": "g", "rejected": "b"})  # prompt 7 reworded
    return write_jsonl(tmp_path / "pairs.jsonl", rows), prompts


def test_rm_and_dpo_data_is_curated_before_the_split_and_moves_no_prompt(tmp_path):
    from alignment.config import RMConfig
    from alignment.data.curate import PHASE_REPORT
    from alignment.data.preferences import load_pair_splits

    data, prompts = _pairs_with_a_reworded_prompt(tmp_path)
    plain = load_config(RMConfig, None, {"model": "m", "data.train": str(data)})
    curated = load_config(RMConfig, None, {"model": "m", "data.train": str(data), "data.curate": {"clusters": 0}})
    before = load_pair_splits(plain.data, 3)
    after = load_pair_splits(curated.data, 3, tmp_path / "phase")
    assert (len(before[0]) + len(before[1]), len(after[0]) + len(after[1])) == (26, 25)
    reworded = prompts[7].upper() + "!"
    assert all(ex.prompt[0]["content"] != reworded for ex in after[0] + after[1])
    assert sum(ex.prompt[0]["content"] == prompts[2] for ex in after[0] + after[1]) == 2  # both pairs kept
    # each remaining prompt stays on its side of the split
    for b, a in zip(before[:2], after[:2], strict=True):
        assert [ex for ex in b if ex.prompt[0]["content"] != reworded] == a
    report = json.loads((tmp_path / "phase" / PHASE_REPORT).read_text())
    assert report["kind"] == "preference" and report["removed"] == {"duplicate": 0, "near_duplicate": 1}


def test_kto_data_is_curated_with_a_prompts_answers_together(tmp_path):
    from alignment.config import DPOConfig
    from alignment.kto import load_unpaired

    prompts = [t for _, t in topic_prompts(per_topic=6)]
    rows = [{"prompt": p, "completion": f"answer {i}", "label": i % 2 == 0} for i, p in enumerate(prompts)]
    rows += [{"prompt": prompts[0], "completion": "a bad answer", "label": False},
             {"prompt": prompts[4].upper() + "?", "completion": "x", "label": True}]
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    cfg = load_config(DPOConfig, None, {"model": "m", "data.train": str(data), "negatives": "kto",
                                        "data.split": {"train": 1.0}, "data.curate": {"clusters": 0}})
    train, _, info = load_unpaired(cfg)
    assert info.rows == 20 and len(train) == 19
    assert sum(r["prompt"][0]["content"] == prompts[0] for r in train) == 2


def test_retrieval_counts_prompts_and_keeps_each_prompts_answers_together(tmp_path):
    """Unpaired data: a prompt near the seed with six answers (three good, three bad) and top_k 1 keeps all six,
    not four records cut at random among equal similarities."""
    prompts = [t for _, t in topic_prompts(per_topic=4)]
    rows = [{"prompt": prompts[0], "completion": f"answer {i}", "label": i < 3} for i in range(6)]
    rows += [{"prompt": p, "completion": "other", "label": True} for p in prompts[1:]]
    data = write_jsonl(tmp_path / "unpaired.jsonl", rows)
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"prompt": prompts[0]}])
    report = curate_file(str(data), "unpaired", str(tmp_path / "out.jsonl"),
                         CurateConfig(seeds=str(seeds), top_k=1, near_dup_threshold=None), CurateOptions(clusters=0))
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == rows[:6] and report["retrieval"]["kept"] == 6
