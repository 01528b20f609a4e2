import os
import sys

# The tests import the reference next to them; the package comes from the install (or, in a
# checkout without an install, from python/ beside this folder).
sys.path.insert(0, os.path.dirname(__file__))
try:
    import tpfuse  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
