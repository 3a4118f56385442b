"""How a run can end badly, beyond a bad argument (a plain ValueError). Its own module, so that
both the loop, which raises these, and the ranks, which re-raise a peer's by name, import it
without importing each other."""


class TrainingDiverged(ValueError):
    """The loss or the gradient became non-finite: this configuration cannot be trained as set
    (typically a learning rate too high). The run is recorded as diverged in ``results.jsonl``."""
