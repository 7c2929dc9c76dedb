"""Kubeflow pipelines: wiring only."""
