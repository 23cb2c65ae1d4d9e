"""tunegate's trainer against a plain transformers Trainer script: same data, model, method and epochs, side by side.

    python -m benchmarks.train_throughput [--rows 2000] [--rounds 3] [--plain-rounds 3] [-S key=value ...]

Three trainers of the default method (params.yaml: LoRA with its options, learning rate, batch size, epochs):
  plain            a plain Trainer script with default settings: fp32, every text padded to model.max_length,
                   random batches, the Trainer's default schedule and no validation
  plain+same-opts  the same script given what tunegate does for speed: padding per batch, length-grouped
                   batches, bf16 where tunegate picks it, and tunegate's schedule, clipping, weight decay and
                   work: validation every eval_steps and at the end, checkpoints every save_steps, the best kept
  tunegate         pipeline.training.loop.train_model, as the flow calls it
  tunegate random  the same with train.length_window=1: random batches, still padded per batch
Each round uses its own seed (train.seed + round) for all trainers, so that accuracy is compared over
seeds, not on one lucky or unlucky batch order. Every run is a fresh process (same start-up, no caches
or allocator state inherited), and the trainers take turns, the order reversed every other round, so
that load on a shared machine hits them alike: plain+same-opts and tunegate in each of --rounds rounds,
plain (several times slower) in the first --plain-rounds. samples/s = training samples / wall seconds in
Trainer.train() (the same count for all three); cpu s = the process's CPU seconds in it, which load from
other jobs does not inflate. Accuracy is on the 1,821 SST-2 test sentences.
Writes benchmarks/results/train_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pipeline  # noqa: F401,I001  (its environment, OpenMP settings included, before torch loads)
import numpy as np
import pandas as pd
import torch
from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator, set_seed

from benchmarks.sst2_slice import accuracy_on, machine, saved_model_accuracy, sst2_slice, table
from pipeline.config import Config, load_config
from pipeline.training.models import load_classifier, load_tokenizer, resolve_model_path
from pipeline.data.split import LABEL, TEXT
from pipeline.training.loop import train_model, use_bf16

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
PLAIN, SAME_OPTS, TUNEGATE, RANDOM = "plain", "plain+same-opts", "tunegate", "tunegate random"


def plain_trainer(config: Config, data: dict[str, pd.DataFrame], same_opts: bool, out: Path) -> dict[str, float]:
    """What a user would write with transformers and peft alone."""
    train = config.train
    set_seed(train.seed)
    base = resolve_model_path(config.model.base)
    tokenizer = load_tokenizer(base)
    lora = train.lora
    model = get_peft_model(load_classifier(base, config.data.labels),
                           LoraConfig(task_type=TaskType.SEQ_CLS, r=lora.r, lora_alpha=lora.alpha,
                                      lora_dropout=lora.dropout, target_modules=lora.target_modules))

    def encode(frame: pd.DataFrame) -> Dataset:
        dataset = Dataset.from_pandas(frame.rename(columns={LABEL: "labels"}), preserve_index=False)
        padding = False if same_opts else "max_length"
        return dataset.map(lambda b: tokenizer(b[TEXT], truncation=True, max_length=config.model.max_length,
                                               padding=padding), batched=True, remove_columns=[TEXT])

    def accuracy(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    args = dict(output_dir=str(out), num_train_epochs=train.epochs, per_device_train_batch_size=train.batch_size,
                learning_rate=train.method_learning_rate, seed=train.seed, report_to="none")
    if same_opts:
        args.update(train_sampling_strategy="group_by_length", bf16=use_bf16(train.precision), data_seed=train.seed,
                    use_cpu=not torch.cuda.is_available(),
                    weight_decay=train.weight_decay, warmup_steps=train.warmup_ratio,
                    lr_scheduler_type=train.lr_scheduler, max_grad_norm=train.max_grad_norm,
                    per_device_eval_batch_size=train.eval_batch_size, eval_strategy="steps",
                    eval_steps=train.eval_steps, save_steps=train.save_steps, save_total_limit=train.save_total_limit,
                    load_best_model_at_end=True, metric_for_best_model="accuracy", logging_steps=train.logging_steps)
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=encode(data["train"]),
                      eval_dataset=encode(data["validation"]) if same_opts else None,
                      data_collator=DataCollatorWithPadding(tokenizer) if same_opts else default_data_collator,
                      compute_metrics=accuracy if same_opts else None)
    started, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    samples = len(data["train"]) * train.epochs
    return {"samples_per_s": samples / seconds, "train_s": seconds, "cpu_s": cpu,
            "test_accuracy": accuracy_on(trainer.model, tokenizer, config, data["test"])}


def tunegate_trainer(config: Config, data: dict[str, pd.DataFrame], out: Path) -> dict[str, float]:
    trained = train_model(config, data["train"], data["validation"], out)
    return {"samples_per_s": trained.train_samples_per_second, "train_s": trained.train_seconds,
            "cpu_s": trained.train_cpu_seconds,
            "test_accuracy": saved_model_accuracy(trained.model_dir, config, data["test"])}


TRAINERS = {PLAIN: lambda config, data, out: plain_trainer(config, data, False, out),
            SAME_OPTS: lambda config, data, out: plain_trainer(config, data, True, out),
            TUNEGATE: tunegate_trainer, RANDOM: tunegate_trainer}
OVERRIDES = {RANDOM: ["train.length_window=1"]}   # of a trainer, after the command line's


def run_in_child(name: str, rows: int, overrides: list[str]) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.train_throughput", "--child", name, "--rows", str(rows),
               *(f"-S{o}" for o in overrides)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"{name} failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="SST-2 training phrases (stratified sample)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of plain+same-opts and tunegate, one seed each")
    parser.add_argument("--plain-rounds", type=int, default=3, help="the first N rounds also run plain")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml override for all three, e.g. -S train.epochs=2")
    parser.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)   # one run here, its row as JSON
    args = parser.parse_args()
    config = load_config(Path.cwd(), args.overrides)
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(TRAINERS[args.child](config, sst2_slice(config, args.rows), Path(out))))
        return

    started_on, runs = machine(), []
    for round_ in range(args.rounds):
        seed = config.train.seed + round_
        names = list(TRAINERS) if round_ < args.plain_rounds else [SAME_OPTS, TUNEGATE, RANDOM]
        for name in names if round_ % 2 == 0 else reversed(names):
            run = run_in_child(name, args.rows, [*args.overrides, f"train.seed={seed}", *OVERRIDES.get(name, [])])
            runs.append({"round": round_, "seed": seed, "trainer": name, **run})
            print(runs[-1], file=sys.stderr, flush=True)

    def of(name: str, key: str, rounds: range | None = None) -> list[float]:
        return [run[key] for run in runs if run["trainer"] == name and (rounds is None or run["round"] in rounds)]

    samples = args.rows * config.train.epochs
    summary = [{"trainer": name, "samples/s": statistics.mean(of(name, "samples_per_s")),
                "samples/s per round": " ".join(f"{v:.1f}" for v in of(name, "samples_per_s")),
                "samples per cpu s": samples / statistics.mean(of(name, "cpu_s")),
                "train s": statistics.mean(of(name, "train_s")),
                "test acc": statistics.mean(of(name, "test_accuracy")),
                "test acc per round": " ".join(f"{v:.3f}" for v in of(name, "test_accuracy"))} for name in TRAINERS]
    # Ratios within a round (the same load), then their mean and worst.
    ratios = {}
    for ours, other, rounds in ((TUNEGATE, PLAIN, range(args.plain_rounds)), (RANDOM, PLAIN, range(args.plain_rounds)),
                                (TUNEGATE, SAME_OPTS, range(args.rounds))):
        per_round = [t / o for t, o in zip(of(ours, "samples_per_s", rounds), of(other, "samples_per_s"))]
        cpu = [o / t for t, o in zip(of(ours, "cpu_s", rounds), of(other, "cpu_s"))]
        accuracy = [t - o for t, o in zip(of(ours, "test_accuracy", rounds), of(other, "test_accuracy"))]
        ratios[f"{ours} / {other}"] = {"mean": statistics.mean(per_round), "min": min(per_round),
                                       "per_round": per_round, "per_cpu_second_mean": statistics.mean(cpu),
                                       "accuracy_difference_mean": statistics.mean(accuracy)}
    report = {"rows": args.rows, "epochs": config.train.epochs, "method": config.train.method,
              "max_length": config.model.max_length, "batch_size": config.train.batch_size, "rounds": args.rounds,
              "plain_rounds": args.plain_rounds, "overrides": args.overrides, "machine": started_on,
              "summary": summary, "ratios": ratios, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(table(summary))
    for name, ratio in ratios.items():
        print(f"{name}: samples/s ratio {ratio['mean']:.2f} (worst round {ratio['min']:.2f}); "
              f"per CPU second {ratio['per_cpu_second_mean']:.2f}; "
              f"test accuracy {ratio['accuracy_difference_mean']:+.3f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
