"""Governance: the tracking store and registry (MLflow), lineage, the gates, promotion under a lock, the
model card, and rebuilding a version from its lineage (reproduce)."""
