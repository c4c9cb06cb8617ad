"""Evaluation: measure how well a model's answers follow the domain's policies."""
