"""Kubernetes deployment of both serving fronts (KServe InferenceServices); see deploy/README.md."""
