"""KFP v2 lightweight components, one folder per lethe step (kubeflow/pipelines-components layout).

Each component only declares its typed KFP interface and calls one function of
`lethe.orchestration.kfp_steps` inside the lethe image; all logic lives in the package.
"""

import os

from lethe import __version__

# The image built from infra/Dockerfile (`docker build -f infra/Dockerfile -t lethe:0.1.0 .`).
# Point LETHE_IMAGE at your registry's copy when compiling for a cluster, e.g.
# LETHE_IMAGE=registry.example.com/ml/lethe:0.1.0 lethe pipeline compile --output lethe.yaml
LETHE_IMAGE = os.environ.get("LETHE_IMAGE", f"lethe:{__version__}")

__all__ = ["LETHE_IMAGE"]
