"""functional_nn.__version__ is the version pip installed (pyproject's)."""

import importlib.metadata

import functional_nn as fnn


def test_version_is_the_installed_distributions():
    assert fnn.__version__ == importlib.metadata.version("functional_nn")
