"""The data audit: quality checks with Great Expectations (checks runs them, expectations builds them), identity
slices found with a lexicon (slices), and the report a reviewer reads (report). A failed error-level check stops
the run."""
