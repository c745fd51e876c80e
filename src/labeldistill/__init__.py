"""LabelDistill (ECCV 2024) in pure PyTorch. Importing the package is cheap: no torch here."""

__version__ = "0.1.0"
