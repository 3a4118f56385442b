"""`longmix attend` (to be written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("longmix attend: not implemented yet")
