"""Evaluation: what every task type shares (suites: metric modules, group and general suites), the general
benchmarks that measure forgetting, log-probability scoring under a causal LM, model bias, the evaluate metric
modules (metrics/) and the report. What differs by task type lives with it in pipeline/tasks/."""
