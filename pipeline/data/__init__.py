"""Data: reading tables and instructions, the deterministic split (dvc.yaml's stage), DVC data versions,
continual batches and the pool they join, and drift of a batch against what the champion learned."""
