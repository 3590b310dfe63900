"""Evaluation: answer questions with a routed model and score it against the full one at equal budget."""
