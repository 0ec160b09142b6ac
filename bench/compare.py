"""``ml-patterns compare``: the same training run in PyTorch and in JAX, on real molecules.

One set of initial weights (written once as a portable checkpoint by torch, read by JAX), one batch
order (one ``BatchSampler`` seed), one config. Each backend trains in its own subprocess, so its
timings and peak memory are its own, not the other framework's thread pools or allocations. The
parent compares the two histories epoch by epoch against the training-history tolerance of
PARITY.md, evaluates both models on the test split, and writes ``report.md``, ``results.json`` and
two PNG plots.

Dropout is off: torch and JAX draw dropout masks from different generators, so two runs with it on
cannot agree to the tolerance (PARITY.md); everything else is the training users would run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import environment
from ml_patterns.molecules.config import MLM_TASK, ModelConfig
from ml_patterns.io import atomic_write_text
from ml_patterns.optim import OptimizerConfig, ScheduleConfig

BACKENDS = ("torch", "jax")
LABELS = {"torch": "PyTorch (eager)", "jax": "JAX (jax.jit)"}
# Training-history tolerance of PARITY.md (CPU, and GPU with full float32 forced).
HISTORY_TOLERANCE = {"cpu": (1e-4, 1e-6), "gpu": (1e-3, 1e-6)}


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """The run ``ml-patterns compare`` makes; defaults finish in about two minutes on 2 CPU cores."""

    model: str = "multitask"
    epochs: int = 3
    batch_size: int = 64
    # A small model: the comparison is about the frameworks, and it must run on a laptop CPU.
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 128
    learning_rate: float = 5e-4
    weight_decay: float = 0.01
    clip_grad_norm: float = 1.0
    warmup_fraction: float = 0.1
    seed: int = 0
    # Longer sequences are truncated (5 of the 4,991 default molecules; the report counts them):
    # the few longest would otherwise set the cost of every batch they land in.
    max_length: int = 128
    # Limit the training split (0: all of it), e.g. for a quick look.
    max_train_molecules: int = 0

    def model_config(self, manifest: dict, max_len: int) -> ModelConfig:
        return ModelConfig.from_manifest(
            manifest, architecture=self.model, d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
            n_decoder_layers=max(1, self.n_layers // 2), d_ff=self.d_ff, dropout=0.0, attention_dropout=0.0,
            max_len=max_len, seed=self.seed,
        )

    def optimizer(self, steps: int) -> OptimizerConfig:
        schedule = ScheduleConfig(warmup_steps=max(1, int(self.warmup_fraction * steps)), total_steps=max(2, steps))
        return OptimizerConfig("adamw", learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                               clip_grad_norm=self.clip_grad_norm, schedule=schedule)


# -- the parent: prepare, launch both workers, compare, report ------------------------------
def run_compare(args: argparse.Namespace) -> int:
    from ml_patterns.molecules.prepare import prepare_dataset, read_manifest

    started = time.perf_counter()
    if not (args.data / "manifest.json").is_file():
        print(f"preparing the default dataset in {args.data} ...", flush=True)
        prepare_dataset(args.data, progress=True)
    manifest = read_manifest(args.data)
    settings = CompareSettings(model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                               max_train_molecules=args.max_train_molecules)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as scratch:
        job = {"data": str(args.data), "settings": dataclasses.asdict(settings), "device": args.device,
               "weights": str(Path(scratch) / "initial.safetensors")}
        results = {}
        for backend in BACKENDS:
            print(f"\n== {LABELS[backend]} ==", flush=True)
            results[backend] = _run_worker(backend, job, Path(scratch))
    report = build_report(settings, manifest, results, args.data)
    report["wall_time_s"] = time.perf_counter() - started
    write_report(report, args.out)
    print("\n" + format_summary(report))
    print(f"\nwrote {args.out / 'report.md'}, results.json, loss_curves.png, speed.png ({report['wall_time_s']:.0f} s)")
    return 0 if report["parity"]["passed"] else 1


def _run_worker(backend: str, job: dict, scratch: Path) -> dict:
    out = scratch / f"{backend}.json"
    command = [sys.executable, "-m", "bench.compare", "--worker", backend, json.dumps(job), str(out)]
    # The worker's progress bars go straight to the user's terminal (stderr is inherited).
    finished = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if finished.returncode != 0:
        raise RuntimeError(f"the {LABELS[backend]} run failed (exit status {finished.returncode}); its error is printed above")
    return json.loads(out.read_text())


def build_report(settings: CompareSettings, manifest: dict, results: dict, data_dir: Path) -> dict:
    device_kind = "gpu" if any(r["device"]["kind"] == "gpu" for r in results.values()) else "cpu"
    rtol, atol = HISTORY_TOLERANCE[device_kind]
    rows, passed = [], True
    torch_h, jax_h = results["torch"]["history"], results["jax"]["history"]
    for epoch in range(len(torch_h["epoch"])):
        row = {"epoch": epoch}
        for key in ("train_loss", "val_loss"):
            a, b = torch_h[key][epoch], jax_h[key][epoch]
            diff = abs(a - b)
            ok = diff <= atol + rtol * abs(a)
            passed &= ok
            row[key] = {"torch": a, "jax": b, "abs_diff": diff, "rel_diff": diff / max(abs(a), 1e-30), "pass": ok}
        rows.append(row)
    speed = {backend: _speed(results[backend]) for backend in BACKENDS}
    return {
        "settings": dataclasses.asdict(settings),
        "dataset": {"path": str(data_dir), "source": manifest["source"]["name"], "splits": manifest["splits"],
                    "max_length": results["torch"]["max_length"], "truncated_molecules": results["torch"]["truncated"]},
        "device_kind": device_kind,
        "tolerance": {"rtol": rtol, "atol": atol, "source": "PARITY.md training histories"},
        "parity": {"passed": passed, "epochs": rows},
        "test_metrics": {backend: results[backend]["test_metrics"] for backend in BACKENDS},
        "speed": speed,
        "backends": {backend: {k: results[backend][k] for k in ("device", "versions", "threads", "precision")} for backend in BACKENDS},
        "environment": environment(),
        "verdict": _verdict(speed, passed, results, device_kind),
    }


def _speed(result: dict) -> dict:
    times = result["epoch_times"]
    train = [t["train_s"] for t in times]
    steady = train[1:] or train
    steps, samples = result["steps_per_epoch"], result["samples_per_epoch"]
    return {
        "first_epoch_s": train[0],
        "steady_epoch_s": statistics.median(steady),
        # The first epoch's extra time: compilation for jax.jit (one per batch shape), warm-up for torch.
        "warmup_s": max(0.0, train[0] - statistics.median(steady)),
        "steps_per_s": steps / statistics.median(steady),
        "samples_per_s": samples / statistics.median(steady),
        "epoch_with_validation_s": statistics.median(t["train_s"] + t["val_s"] for t in times[1:] or times),
        "compilations": result.get("compilations"),
        "peak_memory_bytes": result["peak_memory_bytes"],
        "peak_memory_kind": result["peak_memory_kind"],
    }


def _verdict(speed: dict, passed: bool, results: dict, device_kind: str) -> str:
    torch_rate, jax_rate = speed["torch"]["steps_per_s"], speed["jax"]["steps_per_s"]
    faster, slower = ("jax", "torch") if jax_rate > torch_rate else ("torch", "jax")
    ratio = max(torch_rate, jax_rate) / min(torch_rate, jax_rate)
    device = results["torch"]["device"]["name"]
    agree = ("they agree numerically: every epoch's losses are within the training-history tolerance"
             if passed else "they DISAGREE: some epoch's losses are outside the training-history tolerance (see the table)")
    return (f"On this machine ({device}), {LABELS[faster]} trains this model {ratio:.2f}x faster than "
            f"{LABELS[slower]} at steady state ({speed[faster]['steps_per_s']:.1f} vs {speed[slower]['steps_per_s']:.1f} steps/s), "
            f"and {agree}.")


def format_summary(report: dict) -> str:
    lines = ["Parity (per epoch, " + f"rtol {report['tolerance']['rtol']:g}, atol {report['tolerance']['atol']:g}):",
             "| epoch | loss | torch | jax | abs diff | rel diff | pass |", "|---|---|---|---|---|---|---|"]
    for row in report["parity"]["epochs"]:
        for key in ("train_loss", "val_loss"):
            cell = row[key]
            lines.append(f"| {row['epoch']} | {key} | {cell['torch']:.6f} | {cell['jax']:.6f} | {cell['abs_diff']:.2e} "
                         f"| {cell['rel_diff']:.2e} | {'yes' if cell['pass'] else 'NO'} |")
    lines += ["", "Test split:", "| metric | torch | jax |", "|---|---|---|"]
    torch_m, jax_m = report["test_metrics"]["torch"], report["test_metrics"]["jax"]
    for name in torch_m:
        lines.append(f"| {name} | {torch_m[name]:.4f} | {jax_m[name]:.4f} |")
    lines += ["", "Speed:", "| backend | warm-up / compile | steady epoch | steps/s | samples/s | epoch + validation | compilations | peak memory |",
              "|---|---|---|---|---|---|---|---|"]
    for backend, s in report["speed"].items():
        memory = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB ({s['peak_memory_kind']})"
        lines.append(f"| {LABELS[backend]} | {s['warmup_s']:.2f} s | {s['steady_epoch_s']:.2f} s | {s['steps_per_s']:.1f} "
                     f"| {s['samples_per_s']:.0f} | {s['epoch_with_validation_s']:.2f} s | {s['compilations'] if s['compilations'] is not None else 'n/a'} | {memory} |")
    lines += ["", "Verdict: " + report["verdict"]]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    atomic_write_text(out / "results.json", json.dumps(report, indent=1) + "\n")
    env = report["environment"]
    backends = report["backends"]
    header = [
        f"# ml-patterns compare: {report['settings']['model']} model, {report['settings']['epochs']} epochs",
        "",
        f"- data: {report['dataset']['source']} ({report['dataset']['path']}), splits {report['dataset']['splits']}; "
        f"sequences truncated to {report['dataset']['max_length']} tokens: {report['dataset']['truncated_molecules']} molecules",
        f"- machine: {env['platform']}, {env['processor']}, {env['cpus_available']} CPUs available",
    ]
    for backend, info in backends.items():
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        header.append(f"- {LABELS[backend]}: {info['device']['name']}; {versions}; threads {info['threads']}; precision: {info['precision']}")
    header.append(f"- wall time of the whole comparison: {report['wall_time_s']:.0f} s")
    body = format_summary(report)
    atomic_write_text(out / "report.md", "\n".join(header) + "\n\n" + body + "\n\n![loss curves](loss_curves.png)\n![speed](speed.png)\n")
    _plots(report, out)


def _plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in report["parity"]["epochs"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        for backend, marker in (("torch", "o"), ("jax", "x")):
            values = [row[key][backend] for row in report["parity"]["epochs"]]
            ax.plot(epochs, values, style, marker=marker, label=f"{LABELS[backend]} {key}")
    ax.set_xticks(epochs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training histories (the curves should overlap)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    names = [LABELS[b] for b in BACKENDS]
    axes[0].bar(names, [report["speed"][b]["samples_per_s"] for b in BACKENDS], color=["#ee4c2c", "#4285f4"])
    axes[0].set_ylabel("samples/s (steady state, higher is better)")
    axes[1].bar(names, [report["speed"][b]["warmup_s"] for b in BACKENDS], color=["#ee4c2c", "#4285f4"])
    axes[1].set_ylabel("warm-up / compile time, s")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(report["verdict"][:90] + ("..." if len(report["verdict"]) > 90 else ""), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "speed.png", dpi=120)
    plt.close(fig)


# -- a worker: one backend's training run ---------------------------------------------------
def _worker(backend: str, job: dict, out: Path) -> None:
    from ml_patterns.callbacks import ProgressBar
    from ml_patterns.collate import bucket_ladder
    from ml_patterns.data import LazyDataset, Subset
    from ml_patterns.molecules.prepare import read_manifest

    data = Path(job["data"])
    settings = CompareSettings(**job["settings"])
    manifest = read_manifest(data)
    # Batches are padded to a ladder of lengths (a bounded number of jax.jit compilations); the
    # position table covers the longest rung.
    lengths = manifest["sequence_length"]
    buckets = bucket_ladder(lengths["min"], min(lengths["max"], settings.max_length))
    config = settings.model_config(manifest, max_len=buckets[-1])
    train = LazyDataset(data, split="train")
    if settings.max_train_molecules:
        train = Subset(train, range(min(settings.max_train_molecules, len(train))))
    val, test = LazyDataset(data, split="val"), LazyDataset(data, split="test")
    collate = {"buckets": buckets, "max_length": buckets[-1]}
    steps = -(-len(train) // settings.batch_size)
    optimizer = settings.optimizer(steps * settings.epochs)
    side = _Side(backend, job["device"])
    model = side.model(config, Path(job["weights"]))
    trainer = side.impl.training.Trainer(model, optimizer, [ProgressBar()], device=side.device)
    loader = side.impl.data.make_loader
    trainer.fit(loader(train, settings.batch_size, seed=settings.seed, **collate),
                loader(val, settings.batch_size, shuffle=False, **collate), settings.epochs)
    result = {
        "history": trainer.history.as_dict(),
        "epoch_times": trainer.epoch_times,
        "steps_per_epoch": steps,
        "samples_per_epoch": len(train),
        "truncated": {name: sum(len(r["input_ids"]) > buckets[-1] for r in split) for name, split in
                      (("train", train), ("val", val), ("test", test))},
        "max_length": buckets[-1],
        "compilations": side.compilations(trainer),
        "test_metrics": test_metrics(side, trainer, config, loader(test, settings.batch_size, shuffle=False, **collate)),
        **side.describe(),
        **side.peak_memory(),
    }
    out.write_text(json.dumps(result))


class _Side:
    """What differs between the backends inside a worker."""

    def __init__(self, backend: str, device: str):
        self.backend = backend
        if backend == "torch":
            import torch

            import torch_impl.data
            import torch_impl.models
            import torch_impl.molecules.models
            import torch_impl.state
            import torch_impl.training

            self.impl = torch_impl
            use_gpu = device != "cpu" and torch.cuda.is_available()
            self.device = "cuda" if use_gpu else "cpu"
            if use_gpu:  # full float32: TF32 off (PARITY.md)
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
        else:
            import jax

            import jax_impl.data
            import jax_impl.models
            import jax_impl.molecules.models
            import jax_impl.state
            import jax_impl.training

            jax.config.update("jax_default_matmul_precision", "highest")  # full float32 (PARITY.md)
            self.impl = jax_impl
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            self.device = gpus[0] if gpus and device != "cpu" else jax.devices("cpu")[0]

    def model(self, config: ModelConfig, weights: Path):
        if self.backend == "torch":
            model = self.impl.molecules.models.build_model(config)
            model.save(weights)  # the one set of initial weights, for both backends
            return model
        return self.impl.molecules.models.load_model(weights)

    def predict(self, trainer, batch: dict, task: str | None = None) -> dict:
        task_kwarg = {} if task is None else {"task": task}
        if self.backend == "torch":
            import torch

            trainer.model.eval()
            with torch.no_grad():
                outputs = trainer.model(self.impl.models.as_batch(batch, trainer.device), **task_kwarg)
            return self.impl.state.tree_to_numpy(outputs)
        trainer.model.eval()
        return self.impl.state.tree_to_numpy(trainer.model(trainer._to_batch(batch), **task_kwarg))

    def compilations(self, trainer) -> int | None:
        if self.backend == "jax":
            return int(trainer.train_step._cache_size() + trainer.eval_step._cache_size())
        return None

    def describe(self) -> dict:
        import importlib.metadata

        if self.backend == "torch":
            import torch

            name = torch.cuda.get_device_name(0) if self.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
            return {
                "device": {"kind": "gpu" if self.device == "cuda" else "cpu", "name": name},
                "versions": {"torch": torch.__version__},
                "threads": torch.get_num_threads(),
                "precision": "float32; TF32 off" if self.device == "cuda" else "float32",
            }
        kind = "gpu" if self.device.platform == "gpu" else "cpu"
        return {
            "device": {"kind": kind, "name": self.device.device_kind if kind == "gpu" else f"CPU ({os.cpu_count()} cores)"},
            "versions": {name: importlib.metadata.version(name) for name in ("jax", "jaxlib", "flax", "optax")},
            "threads": os.environ.get("XLA_FLAGS") or "XLA default (all cores)",
            "precision": "float32; jax_default_matmul_precision=highest",
        }

    def peak_memory(self) -> dict:
        if self.backend == "torch" and self.device == "cuda":
            import torch

            return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "peak_memory_kind": "torch.cuda.max_memory_allocated"}
        if self.backend == "jax" and self.device.platform == "gpu":
            stats = self.device.memory_stats() or {}
            return {"peak_memory_bytes": stats.get("peak_bytes_in_use", 0), "peak_memory_kind": "jax peak_bytes_in_use"}
        import resource

        # ru_maxrss is in KiB on Linux: the worker's whole process, framework and data included.
        return {"peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_memory_kind": "process peak RSS"}


def test_metrics(side: _Side, trainer, config: ModelConfig, loader) -> dict[str, float]:
    """MAE per property in the targets' own units, and token accuracy, over the test split."""
    from ml_patterns.molecules.batches import destandardize
    from ml_patterns.training import BatchPreparer

    prepare = BatchPreparer(config)
    errors: dict[str, list] = {task: [] for task in config.tasks}
    correct = total = 0
    for index, collated in enumerate(loader):
        batch = prepare(collated, 0, index, train=False)
        if config.architecture == "autoencoder":
            logits = side.predict(trainer, batch)["logits"]
            hits = (logits.argmax(-1) == batch["decoder_targets"]) & batch["decoder_mask"]
            correct, total = correct + int(hits.sum()), total + int(batch["decoder_mask"].sum())
            continue
        outputs = side.predict(trainer, batch)
        predicted = destandardize({task: outputs[task] for task in config.tasks}, config)
        truth = destandardize(batch["labels"], config)
        for task in config.tasks:
            errors[task].append(np.abs(predicted[task] - truth[task]))
        if config.has_mlm_head:
            logits = side.predict(trainer, {**batch, "input_ids": batch["mlm_input_ids"]}, MLM_TASK)[MLM_TASK]
            hits = (logits.argmax(-1) == batch["mlm_targets"]) & batch["mlm_mask"]
            correct, total = correct + int(hits.sum()), total + int(batch["mlm_mask"].sum())
    metrics = {f"MAE {task}": float(np.concatenate(errors[task]).mean()) for task in config.tasks if errors[task]}
    name = "reconstruction token accuracy" if config.architecture == "autoencoder" else "masked-token accuracy"
    metrics[name] = correct / max(total, 1)
    return metrics


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], json.loads(sys.argv[3]), Path(sys.argv[4]))
    else:
        raise SystemExit("usage: python -m bench.compare --worker BACKEND JOB_JSON OUT (run `ml-patterns compare` instead)")
