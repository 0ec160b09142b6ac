"""A prepared dataset's manifest, read back and verified (written by ``ml_patterns.molecules.prepare``).

The manifest lists every other file of the dataset with its sha256 (``"checksums"``) and covers
itself: ``"manifest_sha256"`` is the sha256 of the manifest's canonical JSON without that key, so an
edited statistic (a target's mean) is caught by ``verify_checksums`` like an edited shard.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ml_patterns.data import DatasetError
from ml_patterns.io import sha256_file

SPLITS = ("train", "val", "test")
FORMAT_PREFIX = "ml-patterns-lazy-dataset/"
MANIFEST_DIGEST = "manifest_sha256"


def manifest_digest(manifest: dict) -> str:
    """The sha256 of ``manifest``'s canonical JSON (sorted keys, compact), its own digest left out."""
    content = {key: value for key, value in manifest.items() if key != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def verify_checksums(root: Path) -> list[str]:
    """Returns the files whose sha256 differs from the manifest's (empty when all match);
    ``"manifest.json"`` among them when the manifest itself was changed (or predates its digest).

    Raises ``DatasetError`` (naming the file and the key) for a malformed manifest, an empty checksum
    table, or an index whose entries are malformed, lack a checksummed file, or disagree with the
    manifest's split counts: a dataset that would be read wrongly does not pass as verified.
    """
    root = Path(root)
    manifest = read_manifest(root)
    manifest_path = root / "manifest.json"
    if not manifest["checksums"]:
        raise DatasetError(f"{manifest_path}: 'checksums' is empty, nothing can be verified; prepare the dataset again")
    # Datasets prepared before the manifest covered itself have no digest: they cannot be verified.
    bad = [] if manifest.get(MANIFEST_DIGEST) == manifest_digest(manifest) else ["manifest.json"]
    for relative, expected in manifest["checksums"].items():
        path = root / relative
        if not path.is_file() or sha256_file(path) != expected:
            bad.append(relative)
    if "index.json" not in manifest["checksums"]:
        raise DatasetError(f"{manifest_path}: 'checksums' has no entry for index.json")
    if "index.json" not in bad:
        _check_index(root / "index.json", manifest)
    return bad


def _check_index(path: Path, manifest: dict) -> None:
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path} must hold a JSON list of entries, got {type(entries).__name__}")
    counts = dict.fromkeys(SPLITS, 0)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: entry {i} must be an object, got {type(entry).__name__}")
        if entry.get("split") not in SPLITS:
            raise DatasetError(f"{path}: entry {i} has 'split' {entry.get('split')!r}, not one of {SPLITS}")
        row = entry.get("row")
        if isinstance(row, bool) or not isinstance(row, int) or row < 0:
            raise DatasetError(f"{path}: entry {i} has 'row' {row!r}, not an integer >= 0")
        if entry.get("file") not in manifest["checksums"]:
            raise DatasetError(
                f"{path}: entry {i} has 'file' {entry.get('file')!r}, which has no checksum in the manifest"
            )
        counts[entry["split"]] += 1
    if counts != manifest["splits"]:
        raise DatasetError(f"{path}: split sizes {counts} differ from the manifest's 'splits' {manifest['splits']}")


def read_manifest(root: Path) -> dict:
    """The manifest of the dataset at ``root``, its keys and their types checked (``DatasetError`` names the key)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a prepared dataset, or its preparation did not finish"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path} is not valid JSON: {error}") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path} is not UTF-8 text: {error}") from None
    _check_manifest(manifest, path)
    return manifest


# The manifest keys a reader relies on and their types; "a.b" is key b of the object at key a.
_MANIFEST_KEYS = {
    "format": str,
    "source": dict,
    "source.name": str,
    "source.path": str,
    "counts": dict,
    "counts.rows_read": int,
    "counts.molecules": int,
    "counts.skipped": int,
    "skipped": list,
    "targets": dict,
    "statistics_from": str,
    "splits": dict,
    "splits.train": int,
    "splits.val": int,
    "splits.test": int,
    "config": dict,
    "config.seed": int,
    "vocab_size": int,
    "sequence_length": dict,
    "sequence_length.min": int,
    "sequence_length.max": int,
    "sequence_length.mean": float,
    "checksums": dict,
}
_TYPE_NAMES = {str: "a string", dict: "an object", list: "a list", int: "an integer", float: "a number"}


def _check_manifest(manifest, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path} must hold a JSON object, got {type(manifest).__name__}")
    for key, kind in _MANIFEST_KEYS.items():
        parent, _, name = key.rpartition(".")
        holder = manifest[parent] if parent else manifest
        if name not in holder:
            raise DatasetError(f"{path}: key {key!r} is missing")
        _check_type(holder[name], kind, path, key)
    if not manifest["format"].startswith(FORMAT_PREFIX):
        raise DatasetError(f"{path}: 'format' is {manifest['format']!r}, not an ml-patterns dataset ({FORMAT_PREFIX}N)")
    for name, stats in manifest["targets"].items():
        _check_type(stats, dict, path, f"targets.{name}")
        for stat in ("mean", "std"):
            _check_type(stats.get(stat), float, path, f"targets.{name}.{stat}")
    for i, row in enumerate(manifest["skipped"]):
        _check_type(row, dict, path, f"skipped[{i}]")
    if "duplicates" in manifest:  # absent from datasets prepared before duplicates were counted
        _check_type(manifest["duplicates"], dict, path, "duplicates")
        for key, kind in (("rows", int), ("conflicting", int), ("conflicts", list)):
            _check_type(manifest["duplicates"].get(key), kind, path, f"duplicates.{key}")
    for relative, digest in manifest["checksums"].items():
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise DatasetError(f"{path}: 'checksums.{relative}' must be a sha256 hex digest, got {digest!r}")


def _check_type(value, kind: type, path: Path, key: str) -> None:
    if kind is float:
        fits = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not fits:
        raise DatasetError(f"{path}: {key!r} must be {_TYPE_NAMES[kind]}, got {value!r}")
