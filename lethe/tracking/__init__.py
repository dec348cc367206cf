"""Tracking layer: MLflow runs, lineage and model registry behind one small `Tracker` API."""

from lethe.tracking.mlflow_tracker import Tracker, TrackingError, flatten_params, run_url

__all__ = ["Tracker", "TrackingError", "flatten_params", "run_url"]
