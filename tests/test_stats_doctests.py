"""The examples in tasks/stats' docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "bootstrap",
    "cd_diagram",
    "delong",
    "image_scores",
    "multiple",
    "ranking",
    "recall",
    "recommendation",
    "regression",
    "seeds",
]


@pytest.mark.parametrize("name", ["__init__", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module("tasks.stats" if name == "__init__" else f"tasks.stats.{name}")
    result = doctest.testmod(module, extraglobs={"np": importlib.import_module("numpy")})
    assert result.attempted > 0 and result.failed == 0
