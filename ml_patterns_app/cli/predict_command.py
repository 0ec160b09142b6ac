"""``ml-patterns predict``: a trained molecule model's predictions for the molecules of a file, on
either backend.

The model is a portable checkpoint (either backend's ``save``, e.g. ``compare``'s report folder's
``torch.safetensors``/``jax.safetensors``) with the vocabulary it was trained on (``vocab.json``
beside it). The molecules are read as ``prepare`` reads them (a CSV/TSV, ``.smi`` or SDF); each is
checked by RDKit and tokenized with the model's own vocabulary, cut to the model's ``max_len``
tokens if longer (as ``compare`` trained it), and every target is predicted in its own units
(``ml_patterns.molecules.predictions``). The CSV written has the source line, the file's columns,
then per target ``predicted <task>`` (regression: the value; classification: the class id) and, for
classification, ``P(<task>=<class>)`` per class, and ``error`` (why a row has no prediction).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import io
import sys
from pathlib import Path

import numpy as np

from ml_patterns.errors import UsageError
from ml_patterns.io import atomic_write_text
from ml_patterns_app.cli.arguments import delimiter, positive_int

# The names of compare's report folder (``compare.written.WEIGHTS``/``VOCABULARY``), repeated here:
# importing compare's writer would load matplotlib on every start of the command line.
BACKENDS = ("torch", "jax")
VOCABULARY = "vocab.json"


def _add_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help="a checkpoint (.safetensors, written by either backend) or a compare report folder (its "
        "BACKEND.safetensors)",
    )
    parser.add_argument(
        "--csv", type=Path, required=True, help="the molecules: a CSV/TSV (header line), a .smi or an .sdf"
    )
    parser.add_argument(
        "--smiles-col",
        default=None,
        help="SMILES column of a CSV/TSV (default: the column named 'smiles' in any case, or ending in 'smiles')",
    )
    parser.add_argument("--sep", type=delimiter, default=None, help="delimiter of a CSV/TSV (default: sniffed)")
    parser.add_argument("--backend", choices=BACKENDS, default="torch", help="the framework that runs the model")
    parser.add_argument(
        "--weights",
        choices=BACKENDS,
        default=None,
        help="with a report folder: which backend's trained weights (default: --backend's); either backend "
        "runs either's",
    )
    parser.add_argument(
        "--vocab",
        type=Path,
        default=None,
        help=f"the vocabulary the model was trained on (default: {VOCABULARY} beside the checkpoint)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto", help="where the model runs")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="molecules per forward pass")
    parser.add_argument("--out", type=Path, default=None, help="the CSV to write (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def resolve_model(model: Path, backend: str, weights: str | None, vocab: Path | None) -> tuple[Path, Path]:
    """``(checkpoint, vocabulary)`` named by ``--model``, ``--weights`` and ``--vocab``."""
    if model.is_dir():
        checkpoint = model / f"{weights or backend}.safetensors"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"--model {model}: no {checkpoint.name} in it (a compare report folder holds one)")
    elif model.is_file():
        if weights is not None:
            raise UsageError("--weights picks a checkpoint in a report folder; --model is already a file")
        checkpoint = model
    else:
        raise FileNotFoundError(f"--model {model}: no such file or folder")
    vocab = vocab or checkpoint.parent / VOCABULARY
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab} not found: pass --vocab, the vocab.json of the dataset the model trained on")
    return checkpoint, vocab


@dataclasses.dataclass
class Molecule:
    line: int
    fields: dict[str, str]
    ids: list[int] | None = None  # token ids, BOS ... EOS; None when the row cannot be predicted
    error: str = ""


def read_molecules(path: Path, smiles_col: str | None, sep: str | None, tokenizer) -> tuple[list[str], list[Molecule]]:
    """The file's columns and its rows, each checked by RDKit and tokenized with ``tokenizer``."""
    from rdkit import Chem, RDLogger

    from ml_patterns.molecules.sources import SkippedRow, require_regular_file
    from ml_patterns.molecules.tables import open_table
    from ml_patterns.molecules.tokenizer import TokenizationError

    require_regular_file(path)
    table = open_table(path, sep)
    column = _smiles_column(table, smiles_col)
    molecules = []
    RDLogger.DisableLog("rdApp.*")  # reported per row, in the error column
    try:
        for record in table.records:
            if isinstance(record, SkippedRow):
                molecules.append(Molecule(record.line, {}, error=record.reason))
                continue
            line, fields = record
            smiles = fields.get(column, "").strip()
            molecule = Molecule(line, fields)
            if not smiles or Chem.MolFromSmiles(smiles) is None:
                molecule.error = "empty SMILES" if not smiles else "RDKit cannot parse this SMILES"
            else:
                try:
                    molecule.ids = tokenizer.encode(smiles)
                except TokenizationError as error:
                    molecule.error = str(error)
            molecules.append(molecule)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return table.columns, molecules


def _smiles_column(table, requested: str | None) -> str:
    from ml_patterns.molecules.sources import MissingColumnsError

    if table.smiles_column is not None:  # a .smi or SDF fixes it
        return table.smiles_column
    if requested is not None:
        if requested not in table.columns:
            raise MissingColumnsError(f"{table.path}: --smiles-col {requested!r} is not in the header {table.columns}")
        return requested
    found = [name for name in table.columns if name.lower() == "smiles" or name.lower().endswith("smiles")]
    if not found:
        raise MissingColumnsError(f"{table.path}: no SMILES column in the header {table.columns}; pass --smiles-col")
    return found[0]


def predict_molecules(runtime, model, device, config, molecules: list[Molecule], batch_size: int) -> dict[int, dict]:
    """``{index of the molecule: {column: value}}`` for every molecule with token ids."""
    from ml_patterns.collate import bucket_ladder, collate_arrays
    from ml_patterns.molecules.predictions import decode_outputs
    from ml_patterns.molecules.tokenizer import PAD_ID

    # A short ladder of padded lengths (each a JAX program), none past the position table.
    buckets = tuple(sorted({min(b, config.max_len) for b in bucket_ladder(1, config.max_len)}))
    ready = [i for i, molecule in enumerate(molecules) if molecule.ids is not None]
    rows = {}
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        records = [{"input_ids": molecules[i].ids} for i in chunk]
        collated = collate_arrays(records, PAD_ID, integer_dtype=np.int32, buckets=buckets, max_length=config.max_len)
        outputs = runtime.predict(model, collated, device)
        decoded = decode_outputs(outputs, config)
        for row, i in enumerate(chunk):
            rows[i] = _row(decoded, config, row)
    return rows


def prediction_columns(config) -> list[str]:
    columns = []
    for task in config.tasks:
        columns.append(f"predicted {task}")
        columns += [f"P({task}={c})" for c in range(config.classes(task))]
    return columns


def _row(decoded: dict, config, row: int) -> dict:
    values = {}
    for task in config.tasks:
        if config.classes(task):
            values[f"predicted {task}"] = int(decoded[task]["class"][row])
            for c, p in enumerate(decoded[task]["probabilities"][row]):
                values[f"P({task}={c})"] = f"{p:.8g}"
        else:
            values[f"predicted {task}"] = f"{decoded[task]['value'][row]:.8g}"
    return values


def _run_predict(args: argparse.Namespace) -> int:
    from ml_patterns import checkpoint
    from ml_patterns.molecules.tokenizer import SmilesTokenizer

    if args.out is not None and args.out.exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists (pass --overwrite to replace it)")
    path, vocab = resolve_model(args.model, args.backend, args.weights, args.vocab)
    config = checkpoint.config_from_metadata(checkpoint.read_metadata(path), path)
    if config.architecture != "multitask" or not config.tasks:
        raise UsageError(f"--model {path}: a {config.architecture} model with no target heads has nothing to predict")
    tokenizer = SmilesTokenizer.load(vocab)
    if tokenizer.vocab_size != config.vocab_size:
        raise UsageError(
            f"--vocab {vocab} has {tokenizer.vocab_size} tokens but the model {config.vocab_size}: not the vocabulary "
            "it was trained on"
        )
    columns, molecules = read_molecules(args.csv, args.smiles_col, args.sep, tokenizer)
    runtime = importlib.import_module(f"{args.backend}_impl.runtime")
    models = importlib.import_module(f"{args.backend}_impl.molecules.models")
    runtime.set_precision("float32")
    device = runtime.select_device(args.device)
    model = models.build_model(config).load(path, device)
    predicted = predict_molecules(runtime, model, device, config, molecules, args.batch_size)
    text = _csv_text(columns, prediction_columns(config), molecules, predicted)
    if args.out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(args.out, text)
    _notes(molecules, predicted, tokenizer, config, args.out)
    return 0


def _csv_text(columns: list[str], predictions: list[str], molecules: list[Molecule], predicted: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ["line", *columns, *predictions, "error"], extrasaction="ignore")
    writer.writeheader()
    for i, molecule in enumerate(molecules):
        writer.writerow({"line": molecule.line, **molecule.fields, **predicted.get(i, {}), "error": molecule.error})
    return buffer.getvalue()


def _notes(molecules, predicted, tokenizer, config, out) -> None:
    """What the user should know about the predictions, on stderr."""
    failed = len(molecules) - len(predicted)
    long = sum(len(m.ids) > config.max_len for m in molecules if m.ids is not None)
    unknown = sum(tokenizer.unknown_counts.values())
    where = "standard output" if out is None else out
    notes = [f"predicted {len(predicted)} of {len(molecules)} molecules -> {where}"]
    if failed:
        notes.append(f"{failed} without a prediction (see the error column)")
    if long:
        notes.append(f"{long} cut to the model's {config.max_len} tokens")
    if unknown:
        notes.append(f"{unknown} tokens not in the model's vocabulary read as <unk>")
    print("; ".join(notes), file=sys.stderr)


COMMANDS = {
    "predict": (
        _add_predict,
        _run_predict,
        "predict every target of a trained molecule model for the molecules of a file",
    ),
}
