"""Whole mixers and models on sequence shards: parallelize, the model planner, regroup, state passing."""
