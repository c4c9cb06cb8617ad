"""A phase completed before a recipe key existed stays complete after the upgrade: keys added later are left
out of the fingerprinted recipe while at their default."""

from __future__ import annotations

from alignment.config import DPOConfig, PPOConfig, SFTConfig, load_config, to_dict
from alignment.pipeline import LATER_KEYS, comparable


def test_later_keys_at_their_default_are_left_out(tmp_path):
    for config in (SFTConfig, DPOConfig, PPOConfig):
        recipe = comparable(to_dict(load_config(config, None, {"model": "m", "data.train": str(tmp_path / "d")})))
        for section, key, _ in LATER_KEYS:
            assert key not in recipe[section], (config.__name__, section, key)
        assert "validation" in recipe["data"] or config is PPOConfig  # other null keys stay as they were


def test_later_keys_that_are_set_count(tmp_path):
    cfg = load_config(SFTConfig, None, {"model": "m", "data.train": str(tmp_path / "d"),
                                        "data.test": str(tmp_path / "t"), "train.early_stopping": {"patience": 2}})
    recipe = comparable(to_dict(cfg))
    assert recipe["data"]["test"] == str(tmp_path / "t") and recipe["train"]["early_stopping"]["patience"] == 2


def test_a_privacy_scan_counts_only_when_it_changes_the_data(tmp_path):
    """report and off train on the files as they are (a phase completed before the key existed stays complete);
    mask and drop train on a cleaned copy, a different recipe."""
    def recipe(pii):
        return comparable(to_dict(load_config(SFTConfig, None, {"model": "m", "data.train": str(tmp_path / "d"),
                                                                "data.pii": pii})))
    assert "pii" not in recipe("report")["data"] and "pii" not in recipe("off")["data"]
    assert recipe("mask")["data"]["pii"] == "mask" and recipe("drop")["data"]["pii"] == "drop"
