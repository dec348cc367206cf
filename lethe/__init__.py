"""lethe: make trained image generative models forget data, and prove it."""

__version__ = "0.1.0"
