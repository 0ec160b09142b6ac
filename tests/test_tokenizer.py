import json

import pytest

from ml_patterns.molecules.prepare import read_default_rows
from ml_patterns.molecules.tokenizer import (
    BOS_ID,
    EOS_ID,
    MASK_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    SmilesTokenizer,
    TokenizationError,
    tokenize,
)


@pytest.mark.parametrize(
    ("smiles", "tokens"),
    [
        ("CCO", ["C", "C", "O"]),
        ("ClCBr", ["Cl", "C", "Br"]),
        ("c1ccccc1", ["c", "1", "c", "c", "c", "c", "c", "1"]),
        ("[nH]1cccc1", ["[nH]", "1", "c", "c", "c", "c", "1"]),
        ("C[C@@H](O)[N+](=O)[O-]", ["C", "[C@@H]", "(", "O", ")", "[N+]", "(", "=", "O", ")", "[O-]"]),
        ("C%12CC%12", ["C", "%12", "C", "C", "%12"]),
        ("F/C=C\\F", ["F", "/", "C", "=", "C", "\\", "F"]),
        ("CC#N.[Na+]", ["C", "C", "#", "N", ".", "[Na+]"]),
        ("[2H]C([2H])([2H])I", ["[2H]", "C", "(", "[2H]", ")", "(", "[2H]", ")", "I"]),
    ],
)
def test_tokenize_known_molecules(smiles, tokens):
    assert tokenize(smiles) == tokens


@pytest.mark.parametrize("smiles", ["CCX", "C C", "CC%1", "Zn"])
def test_tokenize_refuses_characters_no_token_covers(smiles):
    with pytest.raises(TokenizationError, match="position"):
        tokenize(smiles)


def test_special_token_ids_are_fixed():
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID, MASK_ID) == (0, 1, 2, 3, 4)
    tokenizer = SmilesTokenizer.build(["CCO"])
    assert tokenizer.tokens[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS


def test_round_trip_on_every_molecule_of_the_default_dataset():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    smiles = [row.smiles for row in read_default_rows() if Chem.MolFromSmiles(row.smiles) is not None]
    RDLogger.EnableLog("rdApp.*")
    assert len(smiles) > 4900
    tokenizer = SmilesTokenizer.build(smiles)
    for s in smiles:
        ids = tokenizer.encode(s)
        assert ids[0] == BOS_ID and ids[-1] == EOS_ID
        assert tokenizer.decode(ids) == s
    assert not tokenizer.unknown_counts


def test_unknown_tokens_map_to_unk_and_are_counted():
    tokenizer = SmilesTokenizer.build(["CCO"])
    ids = tokenizer.encode("CCBrCl", add_special_tokens=False)
    assert ids[:2] == [tokenizer.token_to_id["C"]] * 2
    assert ids[2:] == [UNK_ID, UNK_ID]
    assert tokenizer.unknown_counts == {"Br": 1, "Cl": 1}
    assert tokenizer.decode(ids) == "CC<unk><unk>"


def test_vocabulary_is_deterministic_and_ordered_by_frequency():
    a = SmilesTokenizer.build(["CCO", "CN", "OC"])
    b = SmilesTokenizer.build(["OC", "CN", "CCO"])
    assert a.tokens == b.tokens
    assert a.tokens[len(SPECIAL_TOKENS) :] == ("C", "O", "N")


def test_save_and_load(tmp_path):
    tokenizer = SmilesTokenizer.build(["CC(=O)Oc1ccccc1C(=O)O"])
    tokenizer.save(tmp_path / "vocab.json")
    loaded = SmilesTokenizer.load(tmp_path / "vocab.json")
    assert loaded.tokens == tokenizer.tokens
    assert json.loads((tmp_path / "vocab.json").read_text())["special_tokens"]["<pad>"] == 0


def test_load_refuses_bad_vocabularies(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        SmilesTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        SmilesTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "nospecial.json").write_text(json.dumps({"tokens": ["C", "O"]}))
    with pytest.raises(ValueError, match="special tokens"):
        SmilesTokenizer.load(tmp_path / "nospecial.json")


def test_decode_refuses_ids_outside_the_vocabulary():
    tokenizer = SmilesTokenizer.build(["CC"])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.decode([2, 99, 3])
