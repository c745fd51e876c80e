"""training layer."""

# Import order matters: modules.py defines StageModule and then imports the LabelDistill stages
# (distill_modules.py, which subclass it); importing it here first makes every import path work.
from labeldistill.training import modules as _modules  # noqa: F401
