"""Issue 15: 'did you mean' suggestions for config fields ignore case."""

from __future__ import annotations

import pytest

from layerwise.experiments.config import ConfigError, _unknown_field, load_config
from layerwise.problems.linrep.settings import LinrepSettings


def test_a_wrong_case_suggests_the_field_in_its_own_spelling():
    allowed = set(LinrepSettings.model_fields)
    assert "did you mean 'kappa_f'?" in _unknown_field("kappa_F", allowed)
    assert "did you mean 'kappa_x'?" in _unknown_field("Kappa_X", allowed)
    assert "did you mean 'n'?" in _unknown_field("N", allowed)
    assert "did you mean" not in _unknown_field("zzzz", allowed)


def test_the_config_error_names_the_right_field(write_config, toy):
    path = write_config({"settings": {"d": 4, "K": 2}})
    with pytest.raises(ConfigError, match=r"settings\.K: unknown field; did you mean 'k'\?"):
        load_config(path)
