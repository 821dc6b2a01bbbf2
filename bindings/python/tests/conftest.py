"""The tests import ``pdiff`` as any user would: the installed package (``pip install
bindings/python``, or ``pip install --target DIR`` with DIR on PYTHONPATH). Nothing here puts the
source tree on sys.path: to test bindings/python/pdiff itself, run with
PYTHONPATH=bindings/python. With PDIFF_TEST_INSTALLED=1, test_pdiff.py checks that the package
imported is not the source tree.
"""
import pytest


def pytest_configure(config):
    # A clear message instead of a collection error in every test module.
    try:
        import pdiff  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "pdiff":
            raise
        raise pytest.UsageError(
            "the pdiff package is not importable: `pip install bindings/python` (or "
            "`pip install --target DIR bindings/python` and PYTHONPATH=DIR), or PYTHONPATH=bindings/python "
            "to test the source tree"
        ) from None
