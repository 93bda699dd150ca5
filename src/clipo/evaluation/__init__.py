"""Scoring models on benchmark sets: generation and verification (`scoring`), accuracy, pass@k and
maj@k (`metrics`), and the validation sets a training run scores (`validation`)."""
