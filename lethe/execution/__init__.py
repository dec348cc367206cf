"""Execution layer: Ray cluster set-up, Ray Train jobs. Sits on the plain-PyTorch math."""
