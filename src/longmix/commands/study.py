"""`longmix study` (to be written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("longmix study: not implemented yet")
