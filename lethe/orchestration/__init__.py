"""Orchestration adapters' shared logic: running lethe steps from KFP components and Ray jobs,
and driving a Kubeflow Pipelines server (compile, local run, submit, schedule).

`components/` and `pipelines/` stay thin: every decision lives here, once.
"""
