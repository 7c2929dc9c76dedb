"""Drift of model inputs and predictions: the monitored tables (Evidently), the workspace
and its dashboard."""
