"""Running a training job: callbacks, checkpoints, console output, signals, hardware fit (precision,
threads), RNG state, RL-step counting and phase timing. Nothing here knows the algorithm."""
