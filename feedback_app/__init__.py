"""Browser app for collecting expert feedback (rankings of candidate responses) and its analysis helpers."""
