"""`longmix mixers` (to be written)."""


def add_arguments(parser):
    pass


def run(args):
    raise SystemExit("longmix mixers: not implemented yet")
