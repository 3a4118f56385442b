"""The bridge to Hugging Face ``transformers`` models (the optional extra ``longmix[hf]``).

- :func:`mixer_from_hf`: the longmix ``TokenMixer`` equal to an HF mixer module, sharing its
  parameters (``hf/mixers.py``).
- :func:`parallelize`: an HF causal LM (or its base model) that runs on this rank's shard of the
  sequence, exactly, each layer in a longmix parallel form (``hf/parallelize.py``).

Importing this package without ``transformers`` raises an ImportError that says what to install;
``import longmix`` never needs it.
"""
try:
    import transformers  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised by a subprocess test
    raise ImportError("longmix.hf needs the optional extra: pip install 'longmix[hf]' "
                      "(transformers >= 5.0)") from err

from .mixers import HF_MIXER_CLASSES, mixer_from_hf  # noqa: E402  (after the import check above)
from .parallelize import ParallelHFModel, parallelize  # noqa: E402
from .plan import HFLayerPlan, plan_hf  # noqa: E402

__all__ = ["parallelize", "ParallelHFModel", "plan_hf", "HFLayerPlan", "HF_MIXER_CLASSES",
           "mixer_from_hf"]
