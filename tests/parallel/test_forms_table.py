"""The forms table is the one source of form names: the CLI, the config, the planner and the mixers
all read it."""
import argparse

import pytest

from longmix import mixers, vocabulary
from longmix.commands import train as train_command
from longmix.mixers.forms import FORM_HOOKS
from longmix.parallel.forms.table import FORMS
from longmix.train import TrainConfig


def test_vocabulary_and_mixin_order_name_the_table_rows():
    assert tuple(FORMS) == vocabulary.FORMS
    assert tuple(name for name, _ in FORM_HOOKS) == vocabulary.FORMS
    assert all(FORMS[name].hooks is hooks for name, hooks in FORM_HOOKS)


@pytest.mark.parametrize("name", mixers.available())
def test_a_mixer_admits_exactly_the_forms_whose_hooks_it_implements(name):
    cls = mixers.get_class(name)
    kw = {"max_len": 16} if getattr(cls, "requires_max_len", False) else {}
    for causal in (False, True):
        try:
            mixer = mixers.build(name, dim=8, heads=2, causal=causal, **kw)
        except ValueError:  # a mixer that cannot be causal (or bidirectional) says so
            continue
        for form in mixer.parallel_forms:
            assert isinstance(mixer, FORMS[form].hooks), (name, form)
        if "state" in mixer.parallel_forms:
            assert causal, f"{name}: the state form needs a causal mixer"


def test_cli_and_config_refuse_an_unknown_form():
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--form", "telepathy"])
    with pytest.raises(ValueError, match="form must be None"):
        TrainConfig(task="passkey", mixer="softmax", context=16, form="telepathy")
