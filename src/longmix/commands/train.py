"""`longmix train` (to be written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("longmix train: not implemented yet")
