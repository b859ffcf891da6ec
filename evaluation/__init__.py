"""Evaluation harness (`dff-eval`): datasets, metrics, activation cache, runners. Nothing imports it."""
