"""``longmix.dist``: the former name of :mod:`longmix.parallel`, kept so that existing code runs.

``import longmix.dist as ld`` gives the same public names (``attention``, ``parallelize``,
``plan``, ``plan_model``, ``shard``, ``unshard``, ``CommStats``, ...). New code should import
:mod:`longmix.parallel`. This is a module, not a folder: tools that skip folders named ``dist/``
(build output) skipped the system's heart.
"""
from longmix.parallel import *  # noqa: F401,F403  (the alias is the whole public surface)
from longmix.parallel import __all__  # noqa: F401
from longmix.parallel import launch  # noqa: F401  (longmix.dist.launch.run_local in older scripts)
