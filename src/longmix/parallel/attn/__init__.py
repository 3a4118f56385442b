"""The attention op over ranks: shuffle, ring, hybrid, the planner and the argument checks."""
