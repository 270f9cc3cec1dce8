"""Scoring the pipeline against the simulator's ground truth (`fieldtrack evaluate`)."""
