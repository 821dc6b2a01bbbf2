"""Import the package from this checkout (bindings/python/pdiff), not from an installed copy."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
