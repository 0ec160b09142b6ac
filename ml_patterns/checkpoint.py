"""Portable checkpoints: one safetensors file in the canonical naming, written once for both backends.

The canonical weights of a model are ``state.to_numpy(model)``: a flat ``{name: numpy array}`` in
PyTorch's ``state_dict`` names and layouts (``layers.0.attention.q_proj.weight`` is ``[out, in]``).
The JAX side maps its own tree onto it (``jax_impl.state``), so a checkpoint written by either
backend loads into the other.

File layout: a standard safetensors file (readable by ``safetensors.safe_open`` anywhere) whose
header ``__metadata__`` holds one key, ``"ml_patterns"``, a JSON document::

    {"format": "ml-patterns-checkpoint/1", "backend": "torch" | "jax",
     "model_class": "SmilesMultiTaskModel" | null (a converted torch.save file),
     "config": {...ModelConfig fields...} | null, "versions": {"torch": "2.13.0", ...},
     "created_at": "2025-...Z", "tensors_sha256": "<hex>"}

``tensors_sha256`` covers every tensor's name, dtype, shape and bytes, so a flipped bit in the data
is caught on load, not only a truncated file. Writes are atomic (``ml_patterns.io.atomic_write``:
temporary file, fsync, rename): an interrupted save leaves the previous checkpoint intact. Loading
parses the header and the raw buffers only; nothing is ever unpickled. A file written by
``torch.save`` (a zip archive, or a bare pickle for the legacy format) is recognized by its first
bytes and refused with the command that converts it (``ml-patterns convert IN.pt OUT.safetensors``,
``torch_impl.state.convert_torch_file``); the torch side also reads such files directly
(``torch_impl.state.read_weights``, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ml_patterns import __version__
from ml_patterns.io import atomic_write
from ml_patterns.losses import BOOL, FLOAT, INT  # numpy's kind letters, as the losses' checks use them
from ml_patterns.molecules.config import ModelConfig

FORMAT = "ml-patterns-checkpoint/1"
METADATA_KEY = "ml_patterns"
BACKENDS = ("torch", "jax")
# What ``sniff`` calls a file written by torch.save: the zip archive (torch >= 1.6) and the legacy pickle.
TORCH_ZIP, PICKLE = "torch.save zip archive", "pickle"
TORCH_KINDS = (TORCH_ZIP, PICKLE)


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or not an ml-patterns checkpoint; names the file."""


class FileBytes(os.PathLike):
    """A file's bytes, read once, and the path they were read from (what ``str()`` and error messages
    show). ``load_checkpoint`` parses these bytes instead of reading the path again, so a checkpoint
    verified as a whole (``ml_patterns.training_checkpoint``) is parsed from the very bytes verified,
    even while another process replaces the file."""

    def __init__(self, path: str | os.PathLike, data: bytes):
        self.path, self.data = Path(path), data

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"FileBytes({str(self.path)!r}, {len(self.data)} bytes)"


class WeightMismatchError(ValueError):
    """Canonical arrays do not fit a model: lists every missing, unexpected and wrongly shaped key;
    names that differ (another structure) point to the porting toolkit's ``transfer_weights``."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str], source: str):
        self.missing, self.unexpected, self.mismatched = sorted(missing), sorted(unexpected), sorted(mismatched)
        missing, unexpected, mismatched = self.missing, self.unexpected, self.mismatched
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"mismatched {len(mismatched)}: {', '.join(mismatched)}")
        message = f"{source} do not fit the model; " + "; ".join(parts)
        if missing or unexpected:
            # Names that differ mean another structure (another port of the model, a backend's
            # other layer names): the canonical names cannot pair those layers, the toolkit can.
            message += f". {TRANSFER_HINT}"
        super().__init__(message)


TRANSFER_HINT = (
    "If these weights come from a model of another structure (another port, other layer names, "
    "the other backend), move them with ml_patterns_app.porting.transfer_weights, which pairs the "
    "layers by name, type and order and converts the layouts (docs/PORTING.md)"
)


# A key that one backend's layer has and the other's lacks, by its last name part -> the sibling
# key that tells the layer is there. torch's BatchNorm counts the batches it has seen
# (``num_batches_tracked``, int64; read only with ``momentum=None``, a cumulative average); flax's
# ``nnx.BatchNorm`` has no such count. A model that has the key loads a file without it keeping its
# own value (as torch itself does for state_dicts older than the key); a model without it ignores it.
ONE_SIDED = {"num_batches_tracked": "running_mean"}

_KIND_NAMES = {FLOAT: "floating point", INT: "integer", BOOL: "bool"}


def dtype_kind(dtype) -> str:
    """``FLOAT``, ``INT`` or ``BOOL`` for a numpy dtype (ml_dtypes' bfloat16 is ``FLOAT``); numpy's
    own kind letter for anything else (``"c"`` complex, ...)."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16" or np.issubdtype(dtype, np.floating):
        return FLOAT
    if np.issubdtype(dtype, np.integer):
        return INT
    return BOOL if dtype == np.bool_ else dtype.kind


def check_arrays(
    expected: Mapping[str, tuple[tuple[int, ...], str]], arrays: Mapping, *, source: str = "arrays"
) -> None:
    """Raises one ``WeightMismatchError`` naming every key that is missing, unexpected, of another
    dtype kind, or of the wrong shape.

    ``expected``: ``{canonical name: (shape, dtype kind)}``, the kind a ``dtype_kind`` letter. An
    array of the expected kind fits whatever its width (the loaders cast it to the model's dtype: a
    float64 file into float32 weights); another kind never does (float into an integer counter, or
    an integer array into float weights, is a wrong file, not a cast). ``ONE_SIDED`` keys are
    neither missing when absent nor unexpected when present beside their sibling.
    """
    missing = [name for name in expected if name not in arrays and not _one_sided(name, expected)]
    unexpected = [name for name in arrays if name not in expected and not _one_sided(name, expected)]
    mismatched = []
    for name, (shape, kind) in expected.items():
        if name not in arrays:
            continue
        array = arrays[name]
        dtype = getattr(array, "dtype", None)
        if dtype is None or dtype_kind(dtype) != kind:
            mismatched.append(f"{name} (dtype {dtype}, expected {_KIND_NAMES.get(kind, kind)})")
        elif tuple(array.shape) != tuple(shape):
            mismatched.append(f"{name} (shape {list(array.shape)}, expected {list(shape)})")
    if missing or unexpected or mismatched:
        raise WeightMismatchError(missing, unexpected, mismatched, source)


def _one_sided(name: str, expected: Mapping[str, object]) -> bool:
    prefix, _, leaf = name.rpartition(".")
    sibling = ONE_SIDED.get(leaf)
    return sibling is not None and (f"{prefix}.{sibling}" if prefix else sibling) in expected


def canonical_array(array: np.ndarray) -> np.ndarray:
    """A C-contiguous copy that safetensors can store: bfloat16 widens to float32 (exactly, every
    bfloat16 is a float32); other dtypes are kept."""
    array = np.asarray(array)
    if array.dtype.name == "bfloat16":
        array = array.astype(np.float32)
    # A copy, never a view: the canonical dict must not change when the model trains on.
    return np.array(array, order="C", copy=True)


def save_checkpoint(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    *,
    backend: str,
    model_class: str | None,
    config: ModelConfig | None,
    versions: Mapping[str, str],
) -> Path:
    """Writes ``arrays`` (canonical naming) and the metadata to ``path`` atomically; returns the path.

    ``versions`` are the writing backend's library versions; ml-patterns, numpy, safetensors and
    Python are added here.
    """
    from safetensors.numpy import save

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    arrays = {name: canonical_array(value) for name, value in arrays.items()}
    metadata = {
        "format": FORMAT,
        "backend": backend,
        "model_class": model_class,
        "config": None if config is None else config.to_dict(),
        "versions": {**library_versions(), **versions},
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tensors_sha256": tensors_sha256(arrays),
    }
    data = save(arrays, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: handle.write(data))
    return path


def load_checkpoint(path: str | os.PathLike | FileBytes) -> tuple[dict[str, np.ndarray], dict]:
    """Reads and verifies a checkpoint: ``(canonical arrays, metadata)``. The file is read once;
    the checksum is verified on the bytes read and the arrays parsed from them (a ``FileBytes``:
    from its bytes, the file not read again).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: truncated or corrupt file (header, data or checksum), or not written by
            ``save_checkpoint``.
    """
    from safetensors.numpy import load

    if isinstance(path, FileBytes):
        path, data = path.path, path.data
    else:
        path = Path(path)
        data = path.read_bytes()
    header = _parse_header(path, data)
    metadata = _metadata(path, header)
    try:
        arrays = load(data)
    except Exception as error:  # safetensors raises its own SafetensorError (and OverflowError, ...)
        raise CheckpointError(f"{path}: corrupt safetensors data ({error})") from None
    if tensors_sha256(arrays) != metadata["tensors_sha256"]:
        raise CheckpointError(f"{path}: tensor data does not match the checksum written with it (corrupt file)")
    return arrays, metadata


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata alone (reads the header, not the tensors; the checksum is checked by ``load_checkpoint``)."""
    path = Path(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
        blob = prefix + handle.read(min(size, _MAX_HEADER))
    return _metadata(path, _parse_header(path, blob, header_only=True))


def sniff(path: str | os.PathLike) -> str:
    """What a file is, from its first bytes: ``"safetensors"``, ``TORCH_ZIP``, ``PICKLE`` or ``"unknown"``."""
    with open(path, "rb") as handle:
        return _kind(handle.read(9))


def _kind(prefix: bytes) -> str:
    if prefix.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    # Before the pickle test: a header of 640 bytes (0x280) starts b"\x80\x02", like pickle's PROTO 2.
    if len(prefix) == 9 and prefix[8:9] == b"{":  # 8-byte header size, then the JSON header
        return "safetensors"
    if len(prefix) >= 2 and prefix[0] == 0x80 and 2 <= prefix[1] <= 5:  # PROTO opcode, protocols 2-5
        return PICKLE
    return "unknown"


def config_from_metadata(metadata: dict, path: str | os.PathLike) -> ModelConfig:
    if metadata.get("config") is None:
        raise CheckpointError(f"{path}: the checkpoint stores no ModelConfig (saved from a model built without one)")
    return ModelConfig.from_dict(metadata["config"])


def tensors_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, array.dtype.str, list(array.shape)]).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions = {"python": sys.version.split()[0], "ml-patterns": __version__}
    for name in ("numpy", "safetensors"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# safetensors itself refuses headers above 100 MB.
_MAX_HEADER = 100_000_000


def _parse_header(path: Path, data: bytes, *, header_only: bool = False) -> dict:
    kind = _kind(data[:9])
    if kind in TORCH_KINDS:
        # Never unpickled here: the torch side reads such a file with torch.load(weights_only=True).
        what = "a PyTorch torch.save file" if kind == TORCH_ZIP else "a pickle (a legacy PyTorch torch.save file?)"
        raise CheckpointError(
            f"{path}: this is {what}, not safetensors; convert it with `ml-patterns convert {path} OUT.safetensors`"
        )
    if len(data) < 8:
        raise CheckpointError(
            f"{path}: truncated ({len(data)} bytes; a safetensors file starts with an 8-byte header size)"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if (size > _MAX_HEADER or 8 + size > len(data)) and kind == "unknown" and len(data) > 8:
        raise CheckpointError(
            f"{path}: not a safetensors file (it starts with {bytes(data[:16])!r}: neither a safetensors header, "
            "a torch.save zip archive nor a pickle)"
        )
    if size > _MAX_HEADER or 8 + size > len(data):
        raise CheckpointError(f"{path}: truncated or corrupt (header of {size} bytes claimed, file has {len(data)})")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: corrupt header ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt header (not a JSON object)")
    if not header_only:
        try:
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (KeyError, IndexError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header (a tensor entry without valid data_offsets)") from None
        needed = 8 + size + max(ends, default=0)
        if needed > len(data):
            raise CheckpointError(f"{path}: truncated (tensor data ends at byte {needed}, file has {len(data)})")
    return header


def _metadata(path: Path, header: dict) -> dict:
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(
            f"{path}: a safetensors file without ml-patterns metadata (not written by save_checkpoint)"
        )
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: corrupt ml-patterns metadata ({error})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise CheckpointError(f"{path}: unsupported checkpoint format {found!r} (this version reads {FORMAT!r})")
    missing = [key for key in ("backend", "model_class", "config", "versions", "tensors_sha256") if key not in metadata]
    if missing:
        raise CheckpointError(f"{path}: metadata lacks {missing}")
    return metadata
