"""Errors a user can cause and fix: each message says what was wrong and how to fix it."""


class TunegateError(Exception):
    """Base class: the CLI prints these without a traceback and exits non-zero."""


class ConfigError(TunegateError):
    """params.yaml or an override is invalid."""


class DataError(TunegateError):
    """An input file cannot be read or has the wrong shape."""


class AuditFailed(TunegateError):
    """The data audit found an error-severity problem; the run stops before training."""


class ModelError(TunegateError):
    """A model cannot be found, loaded or trained as configured."""


class TrainingCrashed(ModelError):
    """A rank of a distributed training died (killed, out of memory, a crash): a retry resumes it from the last
    checkpoint."""


class ReproduceError(TunegateError):
    """A recorded version cannot be rebuilt: its commit, data version or params cannot be had."""


class EnvironmentProblem(TunegateError):
    """Something around the run is missing or broken: a full disk, an unwritable folder, an unreachable store."""


class PromotionError(TunegateError):
    """A promotion, override or rollback cannot be done as asked; nothing was moved."""


class DriftFailed(TunegateError):
    """A new data batch drifted past an error-severity threshold; the run stops before training."""


class ProjectBusy(TunegateError):
    """Another run holds the project's lock: two runs in one folder would race on DVC, outputs and the registry."""


class Interrupted(TunegateError):
    """Ctrl-C stopped the run at a safe point, before anything was registered; the CLI exits 130."""
