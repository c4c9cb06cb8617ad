"""Alignment: SFT, reward modeling, PPO and DPO recipes on DeepSpeed, fed by expert feedback."""

__version__ = "0.1.0"
