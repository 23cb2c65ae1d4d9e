"""Governance: everything MLflow holds, behind one connection (store: the client built once and passed), read
(versions) and written (registration: a version with its lineage, reports and model card), the promotion lock and
alias moves with their history (aliases), what a logged model is served with (serving), the gates and promotion,
lineage, the model card, and rebuilding a version from its lineage (reproduce)."""
