"""Kubeflow pipelines of lethe; `lethe pipeline compile | run --local | submit | schedule` use them."""
