"""`longmix show` (to be written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("longmix show: not implemented yet")
