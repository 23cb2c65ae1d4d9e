"""Where versions registered before the restructure find their serving classes: MLflow pickled each pyfunc by its
class path then (pipeline.registry.TextClassifier, pipeline.registry.TextGenerator), so that path stays importable.
The classes live with their task types (pipeline/tasks/<type>/serving.py)."""
from pipeline.tasks.causal_lm.serving import TextGenerator
from pipeline.tasks.classification.serving import TextClassifier

__all__ = ["TextClassifier", "TextGenerator"]
