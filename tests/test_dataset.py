import json
import os
import pickle
import shutil

import pytest

from ml_patterns.data import DatasetError, LazyDataset
from ml_patterns.molecules.config import PrepareConfig
from ml_patterns.molecules.prepare import default_csv_path, prepare_dataset, read_default_rows, verify_checksums
from ml_patterns.molecules.tokenizer import SmilesTokenizer


@pytest.fixture
def dataset_copy(default_dataset, tmp_path):
    root = tmp_path / "nci"
    shutil.copytree(default_dataset[0], root)
    return root


def test_prepared_records_equal_the_source(default_dataset):
    from rdkit import Chem, RDLogger
    from rdkit.Chem import Descriptors

    root, manifest = default_dataset
    RDLogger.DisableLog("rdApp.*")
    source = [r for r in read_default_rows() if Chem.MolFromSmiles(r.smiles) is not None]
    RDLogger.EnableLog("rdApp.*")
    dataset = LazyDataset(root)
    tokenizer = SmilesTokenizer.load(root / "vocab.json")
    assert len(dataset) == len(source) == manifest["counts"]["molecules"]
    for i, row in enumerate(source):
        record = dataset[i]
        assert record["smiles"] == row.smiles
        assert record["label"]["TPSA"] == row.targets["TPSA"]
        assert tokenizer.decode(record["input_ids"]) == row.smiles
    mol = Chem.MolFromSmiles(source[0].smiles)
    assert dataset[0]["label"]["MolWt"] == pytest.approx(Descriptors.MolWt(mol))
    assert set(dataset[0]["label"]) == {"TPSA", "MolLogP", "MolWt", "NumRings", "NumHDonors"}


def test_unparsable_rows_are_reported_with_line_numbers(default_dataset):
    _, manifest = default_dataset
    assert manifest["counts"]["rows_read"] == 4999
    assert manifest["counts"]["skipped"] == len(manifest["skipped"]) > 0
    lines = [row["line"] for row in manifest["skipped"]]
    with open(default_csv_path()) as handle:
        text = handle.read().splitlines()
    for row in manifest["skipped"]:
        assert text[row["line"] - 1].startswith(row["smiles"])
        assert "RDKit cannot parse" in row["reason"]
    assert lines == sorted(lines)


def test_splits_partition_the_dataset(default_dataset):
    root, manifest = default_dataset
    sizes = {name: len(LazyDataset(root, split=name)) for name in ("train", "val", "test")}
    assert sizes == manifest["splits"]
    assert sum(sizes.values()) == len(LazyDataset(root))
    smiles = {name: {r["smiles"] for r in LazyDataset(root, split=name)} for name in ("val", "test")}
    assert len(smiles["val"]) > 400


def test_prepare_is_deterministic_and_seeded(tmp_path, default_dataset):
    root, manifest = default_dataset
    again = prepare_dataset(tmp_path / "again", progress=False)
    for name in ("index.json", "vocab.json"):
        assert (tmp_path / "again" / name).read_bytes() == (root / name).read_bytes()
    assert again["checksums"] == manifest["checksums"]
    other = prepare_dataset(tmp_path / "other", config=PrepareConfig(seed=1), progress=False)
    assert other["checksums"]["index.json"] != manifest["checksums"]["index.json"]
    assert verify_checksums(root) == []


def test_manifest_holds_target_statistics_from_train(default_dataset):
    root, manifest = default_dataset
    import numpy as np

    tpsa = np.array([r["label"]["TPSA"] for r in LazyDataset(root, split="train")])
    assert manifest["targets"]["TPSA"]["mean"] == pytest.approx(tpsa.mean())
    assert manifest["targets"]["TPSA"]["std"] == pytest.approx(tpsa.std())


def test_user_csv_with_single_target(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("name,smi,logS\na,CCO,0.5\nb,not_a_smiles,1.0\nc,c1ccccc1,\nd,CC(=O)O,-1.25\n")
    manifest = prepare_dataset(
        tmp_path / "out",
        csv_path=csv,
        smiles_col="smi",
        target_cols=["logS"],
        config=PrepareConfig(rdkit_properties=(), val_fraction=0.0, test_fraction=0.0),
        progress=False,
    )
    assert manifest["counts"] == {"rows_read": 4, "molecules": 2, "skipped": 2}
    assert [(r["line"], r["reason"].split(":")[0]) for r in manifest["skipped"]] == [
        (3, "RDKit cannot parse this SMILES"),
        (4, "no label"),  # its one target's field is empty: missing
    ]
    records = list(LazyDataset(tmp_path / "out"))
    assert [(r["smiles"], r["label"]) for r in records] == [("CCO", 0.5), ("CC(=O)O", -1.25)]


def test_user_csv_missing_column(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("smiles,y\nCCO,1\n")
    with pytest.raises(KeyError, match="logP"):
        prepare_dataset(tmp_path / "out", csv_path=csv, target_cols=["logP"], progress=False)
    assert not (tmp_path / "out").exists()


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import ml_patterns.molecules.prepare as prepare_module

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_manifest", explode)
    with pytest.raises(KeyboardInterrupt, match="^$"):
        prepare_dataset(tmp_path / "nci", progress=False)
    assert os.listdir(tmp_path) == []


def test_existing_dataset_is_kept_unless_overwrite(tmp_path, default_dataset):
    target = tmp_path / "nci"
    shutil.copytree(default_dataset[0], target)
    with pytest.raises(FileExistsError, match=r"nci already exists \(pass overwrite=True to replace it\)"):
        prepare_dataset(target, progress=False)
    assert verify_checksums(target) == []


def test_transform_is_applied(default_dataset):
    dataset = LazyDataset(default_dataset[0], transform=lambda r: {**r, "length": len(r["input_ids"])})
    assert dataset[3]["length"] == len(dataset[3]["input_ids"])


def test_construction_reads_only_the_index(dataset_copy):
    shutil.rmtree(dataset_copy / "shards")
    dataset = LazyDataset(dataset_copy)  # no shard is touched yet
    assert len(dataset) > 0
    with pytest.raises(FileNotFoundError, match=r"shard-00000\.jsonl.*entry 0"):
        dataset[0]


def test_open_shards_are_bounded(default_dataset):
    dataset = LazyDataset(default_dataset[0], max_open_shards=2)
    for i in range(0, len(dataset), 97):
        dataset[i]
    assert len(dataset._shards) == 2


def test_dataset_survives_pickling_for_worker_processes(default_dataset):
    dataset = LazyDataset(default_dataset[0])
    first = dataset[10]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone[10] == first


@pytest.mark.parametrize("idx", [-1, 10**9])
def test_index_out_of_range(default_dataset, idx):
    with pytest.raises(IndexError, match=f"index {idx} out of range"):
        LazyDataset(default_dataset[0])[idx]


def test_non_integer_index(default_dataset):
    with pytest.raises(TypeError, match="dataset index must be an integer, got str"):
        LazyDataset(default_dataset[0])["3"]


def write_index(root, entries):
    (root / "index.json").write_text(json.dumps(entries))


def test_missing_index(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.json"):
        LazyDataset(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{", "not valid JSON"),
        ('{"file": "x"}', "JSON list"),
        ('["shards/a.jsonl"]', "entry 0 must be an object"),
    ],
)
def test_corrupt_index(tmp_path, content, message):
    (tmp_path / "index.json").write_text(content)
    with pytest.raises(DatasetError, match=message):
        LazyDataset(tmp_path)


@pytest.mark.parametrize("path", ["../outside.jsonl", "/etc/passwd", "shards/../../outside.jsonl"])
def test_paths_escaping_the_root_are_refused(dataset_copy, path):
    write_index(dataset_copy, [{"file": "shards/shard-00000.jsonl", "row": 0}, {"file": path, "row": 0}])
    dataset = LazyDataset(dataset_copy)
    dataset[0]
    with pytest.raises(DatasetError, match="entry 1 .*escapes"):
        dataset[1]


def test_symlink_out_of_the_root_is_refused(dataset_copy, tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"input_ids": [2, 3], "label": 0.0, "smiles": ""}\n')
    (dataset_copy / "shards" / "link.jsonl").symlink_to(outside)
    write_index(dataset_copy, [{"file": "shards/link.jsonl", "row": 0}])
    with pytest.raises(DatasetError, match="entry 0 .*outside"):
        LazyDataset(dataset_copy)[0]


def test_row_out_of_range(dataset_copy):
    write_index(dataset_copy, [{"file": "shards/shard-00000.jsonl", "row": 100_000}])
    with pytest.raises(DatasetError, match=r"entry 0: row 100000 out of range.*shard-00000"):
        LazyDataset(dataset_copy)[0]


@pytest.mark.parametrize("entry", [{"row": 0}, {"file": 3, "row": 0}, {"file": "shards/shard-00000.jsonl", "row": -2}])
def test_malformed_entries(dataset_copy, entry):
    write_index(dataset_copy, [entry])
    with pytest.raises(DatasetError, match="entry 0"):
        LazyDataset(dataset_copy)[0]


def test_corrupt_shard_row(dataset_copy):
    shard = dataset_copy / "shards" / "shard-00000.jsonl"
    lines = shard.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"smiles": "CC", "input_ids": [2,\n'
    shard.write_bytes(b"".join(lines))
    dataset = LazyDataset(dataset_copy)
    dataset[0]
    with pytest.raises(DatasetError, match=r"entry 1: row 1 of shard .*shard-00000.jsonl is not valid JSON"):
        dataset[1]


def test_unknown_split(default_dataset):
    with pytest.raises(DatasetError, match="splits present"):
        LazyDataset(default_dataset[0], split="training")


def test_checksums_detect_tampering(dataset_copy):
    shard = dataset_copy / "shards" / "shard-00001.jsonl"
    shard.write_bytes(shard.read_bytes().replace(b"C", b"N", 1))
    assert verify_checksums(dataset_copy) == ["shards/shard-00001.jsonl"]


# ---- the seed's layout: one item per file, loaded by _load_file --------------------------------


def test_one_item_per_file_by_extension(tmp_path):
    import numpy as np

    (tmp_path / "items").mkdir()
    (tmp_path / "items" / "a.json").write_text(json.dumps({"x": [1.0, 2.0], "y": 3}, indent=4))  # pretty-printed
    np.save(tmp_path / "items" / "b.npy", np.arange(6, dtype=np.int32).reshape(2, 3))
    np.savez(tmp_path / "items" / "c.npz", x=np.ones(3), y=np.int64(1))
    entries = [{"file": "items/a.json"}, {"file": "items/b.npy"}, {"file": "items/c.npz"}]
    (tmp_path / "index.json").write_text(json.dumps(entries, indent=2))  # a pretty-printed index too
    dataset = LazyDataset(tmp_path, transform=None)
    assert dataset.data_path == tmp_path and dataset.index == entries and len(dataset) == 3
    assert dataset[0] == {"x": [1.0, 2.0], "y": 3}  # no input_ids needed
    np.testing.assert_array_equal(dataset[1], np.arange(6).reshape(2, 3))
    assert dataset[1].dtype == np.int32
    item = dataset[2]
    assert sorted(item) == ["x", "y"] and item["y"] == 1
    np.testing.assert_array_equal(item["x"], np.ones(3))


def test_a_subclass_load_file_is_used(tmp_path):
    (tmp_path / "items").mkdir()
    for i in range(3):
        (tmp_path / "items" / f"{i}.txt").write_text(f"{i} {i * i}")
    (tmp_path / "index.json").write_text(json.dumps([{"file": f"items/{i}.txt"} for i in range(3)]))

    class TextDataset(LazyDataset):
        def _load_file(self, path):
            x, y = path.read_text().split()
            return {"x": int(x), "y": int(y)}

    assert [item["y"] for item in TextDataset(tmp_path, transform=lambda r: {**r, "y": -r["y"]})] == [0, -1, -4]
    expected = r"entry 0: .*0\.txt: no built-in loader for '\.txt' files .*override _load_file"
    with pytest.raises(DatasetError, match=expected):
        LazyDataset(tmp_path)[0]


def test_pickled_or_corrupt_item_files_are_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "index.json").write_text(json.dumps([{"file": "objects.npy"}, {"file": "bad.json"}]))
    dataset = LazyDataset(tmp_path)
    with pytest.raises(DatasetError, match=r"entry 0: .*objects\.npy cannot be read as \.npy: .*allow_pickle=False"):
        dataset[0]
    with pytest.raises(DatasetError, match=r"entry 1: .*bad\.json is not valid JSON"):
        dataset[1]
    write_index(tmp_path, [{"file": "missing.json"}])
    with pytest.raises(FileNotFoundError, match=r"missing\.json \(needed by entry 0\) does not exist"):
        LazyDataset(tmp_path)[0]


@pytest.mark.parametrize("row", [True, False], ids=["shard", "item-file"])
@pytest.mark.parametrize("kind", ["FIFO", "directory"])
def test_only_regular_files_are_opened(tmp_path, row, kind):
    target = tmp_path / "data.jsonl"
    os.mkfifo(target) if kind == "FIFO" else target.mkdir()
    write_index(tmp_path, [{"file": "data.jsonl", **({"row": 0} if row else {})}])
    # A FIFO without a writer would block open() forever: the refusal must come before any open.
    with pytest.raises(DatasetError, match=rf"entry 0: .*data\.jsonl is a {kind}, not a regular file"):
        LazyDataset(tmp_path)[0]


def test_an_index_that_is_not_a_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "index.json")
    with pytest.raises(DatasetError, match=r"the dataset: .*index\.json is a FIFO, not a regular file"):
        LazyDataset(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("row", [True, False], ids=["shard-rows", "item-files"])
def test_memory_stays_flat_however_many_items_are_read(tmp_path, row):
    """Reading 2000 items not read before allocates (almost) nothing that stays: the caches are
    bounded. The earlier dataset kept ~0.65 kB per distinct file touched; an unbounded memory of
    closed shards keeps ~0.26 kB, an unbounded dict of resolved paths ~24 B."""
    import gc
    import pathlib
    import tracemalloc

    # The warm-up reads more files than the caches hold (8 open shards, 64 remembered). n: a leak is
    # per item, while numpy's own bounded caches hold up to ~12 kB more after the loop whatever n
    # is; at 2000 items that is under 6 of the 16 bytes allowed per item.
    n_warm, n = 100, 2000
    (tmp_path / "items").mkdir()
    for i in range(n_warm + n):
        (tmp_path / "items" / f"{i}.json").write_text('{"x": [1, 2, 3]}\n')
    write_index(tmp_path, [{"file": f"items/{i}.json", **({"row": 0} if row else {})} for i in range(n_warm + n)])
    # Traced from the start: the caches' contents must be traced when they are replaced later, or
    # the untraced frees would hide the turnover and count it as growth. Only blocks allocated with
    # the dataset's code on the stack count: tracemalloc sees every thread, and threads left running
    # by earlier tests would otherwise be charged to the dataset. Blocks allocated by pathlib's own
    # lines do not count: pathlib interns every path component (sys.intern), and the interpreter's
    # table of interned strings, shared by the whole process, grows in one multi-MB step whenever
    # it crosses a size threshold (in the full suite it did, inside this loop); its dead entries are
    # removed, so it keeps nothing per item. The caches' own dicts and offset arrays still count.
    # 8 frames reach the dataset's code from any allocation up to 7 calls below it (its own
    # structures are built 1 to 4 calls below); a frame more costs time on every allocation traced.
    tracemalloc.start(8)
    only_the_dataset = [
        tracemalloc.Filter(True, LazyDataset.__init__.__code__.co_filename, all_frames=True),
        tracemalloc.Filter(False, pathlib.__file__),
    ]

    def dataset_bytes() -> int:
        return sum(
            stat.size for stat in tracemalloc.take_snapshot().filter_traces(only_the_dataset).statistics("filename")
        )

    try:
        dataset = LazyDataset(tmp_path)
        for i in range(n_warm):  # the bounded caches fill up here
            dataset[i]
        gc.collect()
        before = dataset_bytes()
        for i in range(n_warm, n_warm + n):
            dataset[i]
        gc.collect()
        grown = dataset_bytes() - before
    finally:
        tracemalloc.stop()
    assert grown / n < 16, f"{grown / n:.0f} bytes kept per item read"


def test_shard_records_need_not_be_molecules(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"x": 1}\n[1, 2]\n')
    write_index(tmp_path, [{"file": "rows.jsonl", "row": 0}, {"file": "rows.jsonl", "row": 1}])
    assert list(LazyDataset(tmp_path)) == [{"x": 1}, [1, 2]]
