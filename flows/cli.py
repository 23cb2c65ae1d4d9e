"""`tunegate`: the command line. Each command wires a flow or a pipeline function; errors a user
can fix are printed as one message, with a non-zero exit."""
from __future__ import annotations

import argparse
import atexit
import gc
import json
import re
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline.config import json_schema, load_config, load_continual_config, profile_overrides
from pipeline.errors import DataError, Interrupted, TunegateError
from pipeline.governance import gates
from pipeline.redaction import redact
from pipeline.terminal import table

KEY_METRICS = ("test_accuracy", "test_f1_macro")
# The commands that run a flow in the project: one at a time in a folder (pipeline/project_lock.py).
RUN_COMMANDS = ("retrain", "continual", "demo")
INTERRUPTED_EXIT = 130   # 128 + SIGINT, as a shell reports a command that Ctrl-C ended
# The commands that only read the registry: a user waits for their answer (issue 9: within 3 s).
READ_COMMANDS = ("models", "lineage")


def _add_overrides(command: argparse.ArgumentParser, help: str) -> None:
    command.add_argument("-P", "--profile", type=Path, metavar="FILE",
                         help="a params profile: its `section.key: value` lines over params.yaml, under -S "
                              "(e.g. params-full.yaml, the full-quality profile)")
    command.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tunegate", description="Audited, versioned, gated fine-tuning.")
    parser.add_argument("--project-dir", default=".", type=Path, help="folder with params.yaml (default: .)")
    commands = parser.add_subparsers(dest="command", required=True)
    retrain = commands.add_parser("retrain", help="audit, split, train, evaluate, register and promote")
    _add_overrides(retrain, "override a params.yaml value for this run, e.g. -S train.method=full")
    models = commands.add_parser("models", help="registered versions with aliases and key metrics")
    models.add_argument("--history", action="store_true",
                        help="every alias move instead, oldest first: flow decisions, overrides, rollbacks")
    promote = commands.add_parser("promote", help="make a version champion, whatever the gates said; recorded")
    promote.add_argument("model", metavar="MODEL_URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    rollback = commands.add_parser("rollback", help="move champion back to the version that held it before; recorded")
    approve = commands.add_parser("approve", help="approve a version waiting for a reviewer: it becomes champion")
    reject = commands.add_parser("reject", help="reject a version waiting for a reviewer: it becomes challenger")
    for command in (approve, reject):
        command.add_argument("version", metavar="VERSION", help="the version number, as `tunegate models` lists it")
    for command in (promote, rollback, approve, reject):
        command.add_argument("--reason", help="why, for the alias history (required)")
        command.add_argument("--by", default=None, help="who, for the alias history (default: your login name)")
    step = commands.add_parser("continual", help="one continual step: learn the next new batch of continual.incoming")
    _add_overrides(step, "override a params.yaml value for this run")
    schedule = commands.add_parser("schedule", help="serve the continual step as a Prefect deployment on a schedule")
    when = schedule.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help='a cron schedule, e.g. "0 3 * * 1" (Mondays at 03:00)')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="run every SECONDS instead")
    _add_overrides(schedule, "override a params.yaml value for every scheduled run")
    node = commands.add_parser("train-node", help="another machine of a multi-node training run: its ranks "
                                                  "(train.distributed; node 0 runs retrain)")
    _add_overrides(node, "override a params.yaml value, e.g. -S train.distributed.node_rank=1")
    demo = commands.add_parser("demo", help="run a story on the bundled data")
    demo.add_argument("story", choices=["continual"], help="continual: SST-2 champion, then electronics reviews")
    evaluate = commands.add_parser("evaluate", help="evaluate a registered version or a local model directory")
    evaluate.add_argument("model", metavar="MODEL_URI",
                          help="models:/NAME/VERSION, models:/NAME@ALIAS, or a local transformers model directory")
    lineage = commands.add_parser("lineage", help="what a registered version was built from, back to its base model")
    lineage.add_argument("model", metavar="MODEL_URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    reproduce = commands.add_parser("reproduce", help="rebuild a registered version from its lineage in a scratch "
                                                      "checkout and compare its metrics; exit 1 if they differ")
    reproduce.add_argument("model", metavar="MODEL_URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    audit = commands.add_parser("audit", help="audit one data file with params.yaml's columns, labels and checks; "
                                              "exit 1 if an error-severity check fails")
    audit.add_argument("path", type=Path, help="a CSV, TSV, Parquet or JSON Lines file")
    commands.add_parser("schema", help="print the JSON schema of params.yaml (the project's params.schema.json)")
    return parser


def _models(project_dir: Path) -> str:
    config = load_config(project_dir)
    # here, not at the top: MLflow takes a second to import; after the config, so a bad params.yaml fails first
    from pipeline.governance.store import connect
    from pipeline.governance.versions import REASON_TAG, list_versions

    from pipeline.governance.approval import pending_versions

    rows = list_versions(connect(config))
    if not rows:
        return f"No versions of {config.registry.model_name} registered yet: run `tunegate retrain`."
    columns = list(dict.fromkeys([*KEY_METRICS, *gates.gated_metrics(m for row in rows for m in row.metrics)]))
    header = ["version", "aliases", "created", *columns, "method", "data_version", "decision"]
    versions = table([header] + [[row.version, ",".join(row.aliases) or "-", row.created,
                                  *(f"{row.metrics[m]:.4f}" if m in row.metrics else "-" for m in columns),
                                  row.tags.get("method", "-"), row.tags.get("data_version", "-")[:12],
                                  row.tags.get(REASON_TAG, "-")] for row in rows])
    pending = [f"  version {p.version} (Prefect flow run {p.flow_run_id}): tunegate approve {p.version} --reason "
               f"\"...\"  |  tunegate reject {p.version} --reason \"...\"" for p in pending_versions(rows)]
    return "\n".join([versions, *(["", "Waiting for a reviewer's approval:", *pending] if pending else [])])


def _history(project_dir: Path) -> str:
    config = load_config(project_dir)
    from pipeline.governance.aliases import alias_history
    from pipeline.governance.store import connect

    moves = alias_history(connect(config))
    if not moves:
        return f"No alias of {config.registry.model_name} has moved yet: run `tunegate retrain`."
    header = ["time", "action", "alias", "from", "to", "by", "reason"]
    return table([header] + [[move.time, move.action, move.alias, move.from_version or "-", move.to_version,
                              move.by, move.reason] for move in moves])


def _moved(move) -> str:
    return f"{move.alias}: version {move.from_version or '-'} -> {move.to_version} ({move.action} by {move.by})"


def _evaluate(project_dir: Path, model_uri: str) -> str:
    config = load_config(project_dir)
    from pipeline.data.split import read_split, split_paths
    from pipeline.governance.store import connect
    from pipeline.governance.versions import download_model
    from pipeline.tasks import evaluate_model

    model_dir = download_model(connect(config), model_uri) if model_uri.startswith("models:/") else Path(model_uri)
    test = split_paths(config).test
    if not test.is_file():
        raise DataError(f"No test split at {test}: run `tunegate retrain` (or `dvc repro split`) first.")
    report_dir = config.path(config.evaluate.report_dir) / re.sub(r"[^A-Za-z0-9.@-]+", "-", model_uri).strip("-")
    report = evaluate_model(config, model_dir, read_split(test), report_dir)
    return table([*((name, f"{value:.4f}") for name, value in report.metrics.items()), ("report", report.path)])


def _lineage(project_dir: Path, model_uri: str) -> str:
    config = load_config(project_dir)
    from pipeline.governance.lineage import format_tree
    from pipeline.governance.store import connect
    from pipeline.governance.versions import lineage_chain

    return format_tree(lineage_chain(connect(config), model_uri))


def _check_retrain_config(project_dir: Path, overrides: list[str]) -> None:
    # A bad params.yaml or -S override fails here, in a second; a wrong model in seconds (torch loads): both
    # before Prefect and its temporary server start.
    config = load_config(project_dir, overrides)
    from pipeline.training.requirements import check_model_settings

    check_model_settings(config)


def _check_continual_config(project_dir: Path, overrides: list[str]) -> None:
    config = load_continual_config(project_dir, overrides)
    from pipeline.data.batches import check_labelled   # pandas and scikit-learn: after the config's own checks
    from pipeline.training.requirements import check_model_settings

    check_labelled(config)
    for extra in config.continual.candidates or [[]]:
        check_model_settings(load_continual_config(project_dir, [*overrides, *extra]))


def main(argv: list[str] | None = None) -> int:
    return _run(_parser().parse_args(argv))


def process_main() -> int:
    """`tunegate` as a process of its own (the console script, `python -m flows.cli`). A read command runs
    without cyclic garbage collection: nearly all it allocates is MLflow's module graph, never garbage, which
    the collector would walk again and again as it grows and once more as Python exits, about a third of the
    command's CPU time. The cycles it leaves uncollected (under 60 KB a listed version) go with the process,
    seconds later; `main` leaves a caller's collector alone."""
    args = _parser().parse_args()
    if args.command in RUN_COMMANDS:
        from pipeline.interruption import stop_at_safe_points

        stop_at_safe_points()
    if args.command in READ_COMMANDS:
        gc.disable()
        # before Python's final collection at exit: frozen objects are neither walked nor freed one by one
        atexit.register(gc.freeze)
    return _run(args)


def _run_flow(args: argparse.Namespace) -> None:
    """A command that runs a flow: its config checked, the project's lock held, the run's own Prefect server."""
    from pipeline.project_lock import project_lock

    if args.profile:
        args.overrides = [*profile_overrides(args.profile), *args.overrides]
    if args.command in ("retrain", "train-node"):
        _check_retrain_config(args.project_dir, args.overrides)
    elif args.command in ("continual", "schedule"):
        _check_continual_config(args.project_dir, args.overrides)   # a bad config fails now, not at 03:00
    # Without the project's lock: each scheduled run takes it (flows/continual.py), and another node's ranks
    # join node 0's run, which holds it.
    unlocked = args.command in ("schedule", "train-node")
    with nullcontext() if unlocked else project_lock(args.project_dir):
        from flows.server import start_temporary_server

        start_temporary_server()
        if args.command == "retrain":
            from flows.retrain import retrain

            print(retrain(str(args.project_dir), args.overrides))
        elif args.command == "continual":
            from flows.continual import continual_flow

            print(continual_flow(str(args.project_dir.resolve()), args.overrides))
        elif args.command == "schedule":
            from flows.schedule import serve

            serve(args.project_dir.resolve(), args.cron, args.interval, args.overrides)
        elif args.command == "train-node":
            from flows.train_node import train_node

            print(train_node(str(args.project_dir), args.overrides))
        else:
            from flows.demo import run_demo

            print(run_demo(args.project_dir.resolve()))


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command in (*RUN_COMMANDS, "schedule", "train-node"):
            _run_flow(args)
        elif args.command == "models":
            print(_history(args.project_dir) if args.history else _models(args.project_dir))
        elif args.command in ("promote", "rollback"):
            config = load_config(args.project_dir)
            from pipeline.governance import promotion

            from flows.events import publish_alias_moves

            publish_alias_moves()
            by = args.by or promotion.login_name()
            move = (promotion.override(config, args.model, args.reason, by) if args.command == "promote"
                    else promotion.rollback(config, args.reason, by))
            print(_moved(move))
        elif args.command in ("approve", "reject"):
            config = load_config(args.project_dir)
            from flows.approval import resume
            from pipeline.governance.promotion import login_name

            # the paused flow run moves the alias (and emits its event); this waits until it has
            print(_moved(resume(config, args.version, args.command, args.by or login_name(), args.reason)))
        elif args.command == "evaluate":
            print(_evaluate(args.project_dir, args.model))
        elif args.command == "lineage":
            print(_lineage(args.project_dir, args.model))
        elif args.command == "reproduce":
            config = load_config(args.project_dir)
            from pipeline.governance.reproduce import reproduce

            reproduction = reproduce(config, args.model)
            print(reproduction)
            return 0 if reproduction.reproduced else 1
        elif args.command == "schema":
            print(json.dumps(json_schema(), indent=2))
        elif args.command == "audit":
            config = load_config(args.project_dir)
            from pipeline.audit.checks import audit_file
            from pipeline.audit.report import as_text

            report = audit_file(config, args.path.resolve())
            print(as_text(report))
            return 0 if report.passed else 1
    except Interrupted as exc:
        print(f"tunegate: {exc}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except TunegateError as exc:
        print(f"tunegate: error: {redact(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(process_main())
