"""The seed document's examples, run as the seed writes them: on torch with the seed's own code
wherever it is code a user writes (the loop, callbacks, collate, init, losses: copied verbatim and
compared with ours), on JAX in JAX's idiom with ``jax_impl``'s names.

Covered elsewhere, not repeated here: EncoderDecoder(nn.Linear(8, 3), nn.Linear(3, 8)) and plain
MultiTaskModel heads (tests/test_models.py), the seed's three callback classes on their own ABC
(tests/test_training.py), EarlyStopping against the seed's rule on random sequences and Keras'
tables (tests/test_callbacks.py), torch.save files (tests/test_checkpoint.py), the seed's LazyDataset
layout and memory (tests/test_dataset.py), and every script in examples/ (tests/test_examples.py).
The seed's EarlyStopping and ModelCheckpoint, verbatim, are imported from tests/test_training.py
(pytest puts tests/ on the path).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from test_training import SeedEarlyStopping, SeedModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

import jax_impl.data
import jax_impl.state
import jax_impl.training
import torch_impl.state
import torch_impl.training
from jax_impl import collate as jax_collate
from jax_impl import losses as jax_losses
from jax_impl import models as jax_models
from ml_patterns import callbacks
from ml_patterns.data import LazyDataset
from torch_impl import collate as torch_collate
from torch_impl import init as torch_init
from torch_impl import losses as torch_losses
from torch_impl import models as torch_models

BACKENDS = ["torch", "jax"]
TRAINING = {"torch": torch_impl.training, "jax": jax_impl.training}
CPU = {"torch": lambda: torch.device("cpu"), "jax": lambda: jax.devices("cpu")[0]}


def points(n: int, seed: int) -> dict[str, np.ndarray]:
    """``{"x": float32 [n, 8], "y": float32 [n]}``, y = sin(2 * mean(x)) plus a little noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return {"x": x, "y": (np.sin(2 * x.mean(axis=1)) + 0.1 * rng.normal(size=n)).astype(np.float32)}


def array_batches(data: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(data.values())))
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


def torch_loader(data: dict[str, np.ndarray], batch_size: int) -> DataLoader:
    """A DataLoader of dict items, batched by torch's default collate (the seed's loaders)."""
    items = [{k: torch.from_numpy(np.asarray(v[i])) for k, v in data.items()} for i in range(len(data["x"]))]
    return DataLoader(items, batch_size=batch_size)


# -- the seed's BaseModel, subclassed as the seed means it ---------------------------------------
class TorchRegressor(torch_models.BaseModel):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"y": self.net(batch["x"]).squeeze(-1)}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(self(batch)["y"], batch["y"])


class JaxRegressor(jax_models.BaseModel):
    """The same in JAX's idiom: an NNX module, ``__call__`` for ``forward``."""

    def __init__(self, rngs: nnx.Rngs):
        super().__init__()
        self.hidden, self.out = nnx.Linear(8, 16, rngs=rngs), nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {"y": self.out(jnp.tanh(self.hidden(batch["x"])))[:, 0]}

    def compute_loss(self, batch: dict[str, jax.Array]) -> jax.Array:
        return jnp.mean((self(batch)["y"] - batch["y"]) ** 2)


def regressor(backend: str, seed: int = 0):
    if backend == "torch":
        torch.manual_seed(seed)
        return TorchRegressor()
    return JaxRegressor(nnx.Rngs(seed))


def weights(backend: str, model) -> dict[str, np.ndarray]:
    return (torch_impl.state if backend == "torch" else jax_impl.state).to_numpy(model)


# -- the training loop ----------------------------------------------------------------------------
def seed_train(model, train_loader, val_loader, optimizer, num_epochs, device):
    """The seed's "Basic Training Loop", verbatim."""
    history = {"train_loss": [], "val_loss": []}

    for epoch in range(num_epochs):
        # Training phase
        model.train()
        train_loss = 0.0

        for batch in train_loader:
            batch = {k: v.to(device) for k, v in batch.items()}

            optimizer.zero_grad()
            loss = model.compute_loss(batch)
            loss.backward()
            optimizer.step()

            train_loss += loss.item()

        # Validation phase
        model.eval()
        val_loss = 0.0

        with torch.no_grad():
            for batch in val_loader:
                batch = {k: v.to(device) for k, v in batch.items()}
                loss = model.compute_loss(batch)
                val_loss += loss.item()

        # Record metrics
        history["train_loss"].append(train_loss / len(train_loader))
        history["val_loss"].append(val_loss / len(val_loader))

        print(f"Epoch {epoch}: train={history['train_loss'][-1]:.4f}, val={history['val_loss'][-1]:.4f}")

    return history


def jax_idiom_train(model, train_loader, val_loader, tx, num_epochs):
    """The seed's loop as a Flax user writes it: ``nnx.Optimizer``, a jitted ``nnx.value_and_grad`` step."""
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(lambda m: m.compute_loss(batch))(model)
        optimizer.update(model, grads)
        return loss

    evaluate = nnx.jit(lambda model, batch: model.compute_loss(batch))
    history = {"train_loss": [], "val_loss": []}
    for _ in range(num_epochs):
        model.train()
        train_loss = sum(float(train_step(model, optimizer, batch)) for batch in train_loader)
        history["train_loss"].append(train_loss / len(train_loader))
        model.eval()
        history["val_loss"].append(sum(float(evaluate(model, b)) for b in val_loader) / len(val_loader))
    return history


def test_torch_train_is_the_seeds_loop(capsys):
    """Same model, optimizer, DataLoaders (equal batches) and positional device: the same history (the
    per-sample mean is the mean of batch means when batches are equal) and bit-identical weights,
    dropout included (model.train()/eval() where the seed calls them). Ours prints nothing."""
    train_data, val_data = points(64, 0), points(32, 1)
    histories, trained = {}, {}
    for name, loop in (("seed", seed_train), ("ours", torch_impl.training.train)):
        model = regressor("torch")
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        histories[name] = loop(
            model, torch_loader(train_data, 16), torch_loader(val_data, 16), optimizer, 3, torch.device("cpu")
        )
        trained[name] = weights("torch", model)
    assert capsys.readouterr().out.count("Epoch ") == 3  # the seed's three lines only
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(histories["ours"][key], histories["seed"][key], rtol=1e-6, err_msg=key)
    assert histories["seed"]["val_loss"][-1] < histories["seed"]["val_loss"][0]
    assert all(np.array_equal(trained["ours"][k], trained["seed"][k]) for k in trained["seed"])


def test_jax_train_is_the_seeds_loop_in_jax_idiom():
    train_batches, val_batches = array_batches(points(64, 0), 16), array_batches(points(32, 1), 16)
    reference, model = regressor("jax"), regressor("jax")
    expected = jax_idiom_train(reference, train_batches, val_batches, optax.adam(1e-2), 3)
    history = jax_impl.training.train(model, train_batches, val_batches, optax.adam(1e-2), 3, jax.devices("cpu")[0])
    for key in ("train_loss", "val_loss"):
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, err_msg=key)
    assert expected["val_loss"][-1] < expected["val_loss"][0]
    ours, theirs = weights("jax", model), weights("jax", reference)  # the module holds the trained weights
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


# -- callbacks: ours beside the seed's own, in one real run ---------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_our_callbacks_decide_as_the_seeds_in_a_real_run(backend, tmp_path, capsys):
    """Ours in the seed's positional order beside the seed's own classes (verbatim, in
    tests/test_training.py), on one trainer: both stop at the same epoch (one deciding alone would
    show: the other would not have fired) and save the same epochs. Adam at a high rate on a small
    noisy set makes val_loss wander (improvements, setbacks, a stop after several epochs)."""
    model = regressor(backend, seed=3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1) if backend == "torch" else optax.adam(0.1)
    stopper, every = callbacks.EarlyStopping(2, 1e-4), callbacks.ModelCheckpoint(tmp_path / "every", False)
    hooks = [
        SeedEarlyStopping(2, 1e-4),
        SeedModelCheckpoint(tmp_path / "seed"),
        stopper,
        callbacks.ModelCheckpoint(tmp_path / "ours", True),
        every,
    ]
    trainer = TRAINING[backend].Trainer(model, optimizer, hooks)
    history = trainer.fit(array_batches(points(48, 4), 8), array_batches(points(48, 5), 16), num_epochs=30)
    stopped = len(history) - 1
    assert stopped < 29 and f"Early stopping at epoch {stopped}\n" in capsys.readouterr().out
    assert trainer.stop_reason.startswith(f"EarlyStopping at epoch {stopped}:") and stopper.stopped_epoch == stopped
    seed_saved = sorted(int(p.name[len("epoch_") : -len(".pt")]) for p in (tmp_path / "seed").iterdir())
    ours_saved = sorted(int(p.name[len("epoch_") :]) for p in (tmp_path / "ours").iterdir())
    assert seed_saved == ours_saved and 0 in ours_saved
    assert sorted(p.name for p in (tmp_path / "every").iterdir()) == sorted(f"epoch_{e}" for e in range(stopped + 1))


# -- BaseModel save / load(path, device) ----------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_base_model_save_then_load_with_a_device(backend, tmp_path):
    source, target = regressor(backend, 0), regressor(backend, 1)
    source.save(tmp_path / "model.safetensors")
    assert target.load(tmp_path / "model.safetensors", CPU[backend]()) is target
    expected, loaded = weights(backend, source), weights(backend, target)
    assert sorted(expected) == sorted(loaded) and all(np.array_equal(expected[k], loaded[k]) for k in expected)


def test_torch_base_model_loads_the_seeds_torch_save_file(tmp_path):
    source, target = regressor("torch", 0), regressor("torch", 1)
    torch.save(source.state_dict(), tmp_path / "model.pt")  # the seed's BaseModel.save
    target.load(tmp_path / "model.pt", torch.device("cpu"))
    expected = weights("torch", source)
    assert all(np.array_equal(weights("torch", target)[k], v) for k, v in expected.items())


class TorchNormalized(torch_models.BaseModel):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("writer", ["save", "torch.save"])
def test_torch_base_model_with_batch_norm_loads_its_own_files(writer, tmp_path):
    torch.manual_seed(0)
    source, target = TorchNormalized(), TorchNormalized()
    source(torch.randn(16, 8))  # training mode: running statistics and num_batches_tracked move
    path = tmp_path / "model.bin"
    source.save(path) if writer == "save" else torch.save(source.state_dict(), path)
    target.load(path, torch.device("cpu"))
    expected, loaded = source.state_dict(), target.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in expected.items())


def test_jax_base_model_with_batch_norm_keeps_its_running_statistics(tmp_path):
    class Normalized(jax_models.BaseModel):
        def __init__(self, rngs: nnx.Rngs):
            super().__init__()
            self.hidden, self.norm = nnx.Linear(8, 4, rngs=rngs), nnx.BatchNorm(4, rngs=rngs)
            self.out = nnx.Linear(4, 1, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.out(self.norm(self.hidden(x)))

    source, target = Normalized(nnx.Rngs(0)), Normalized(nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=(16, 8)).astype(np.float32))
    source(x)  # training mode: the running statistics move
    source.save(tmp_path / "model.safetensors")
    target.load(tmp_path / "model.safetensors", jax.devices("cpu")[0])
    source.eval(), target.eval()
    np.testing.assert_array_equal(np.asarray(target(x)), np.asarray(source(x)))


# -- MultiTaskModel with plain heads, CombinedLoss, integer class labels, through train() -----------
class TorchTwoTasks(torch_models.MultiTaskModel):
    def __init__(self):
        torch.manual_seed(0)
        heads = {"value": nn.Linear(16, 1), "class": nn.Linear(16, 3)}
        super().__init__(nn.Sequential(nn.Linear(8, 16), nn.ReLU()), heads)
        losses = {"value": nn.MSELoss(), "class": nn.CrossEntropyLoss()}
        self.criterion = torch_losses.CombinedLoss(losses, {"class": 0.5})

    def compute_loss(self, batch):
        out = self(batch["x"])
        return self.criterion({"value": out["value"][:, 0], "class": out["class"]}, batch)[0]


class JaxTwoTasks(jax_models.MultiTaskModel):
    def __init__(self, rngs: nnx.Rngs):
        heads = {"value": nnx.Linear(16, 1, rngs=rngs), "class": nnx.Linear(16, 3, rngs=rngs)}
        super().__init__(nnx.Sequential(nnx.Linear(8, 16, rngs=rngs), nnx.relu), heads)
        self.criterion = jax_losses.CombinedLoss(
            {
                "value": lambda prediction, target: jnp.mean((prediction - target) ** 2),
                "class": lambda logits, labels: optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(),
            },
            {"class": 0.5},
        )

    def compute_loss(self, batch):
        out = self(batch["x"])
        return self.criterion({"value": out["value"][:, 0], "class": out["class"]}, batch)[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_multitask_model_with_plain_heads_trains(backend):
    data = points(96, 6)
    data = {"x": data["x"], "value": data["y"], "class": np.argmax(data["x"][:, :3], axis=1)}  # int64 class ids
    model = TorchTwoTasks() if backend == "torch" else JaxTwoTasks(nnx.Rngs(0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2) if backend == "torch" else optax.adam(1e-2)
    batches = array_batches(data, 16)
    history = TRAINING[backend].train(model, batches, batches, optimizer, 8)
    assert history["train_loss"][-1] < 0.6 * history["train_loss"][0]
    x = batches[0]["x"]
    logits = model(torch.from_numpy(x) if backend == "torch" else jnp.asarray(x), task="class")["class"]
    predicted = np.argmax(np.asarray(logits.detach() if backend == "torch" else logits), axis=1)
    assert np.mean(predicted == batches[0]["class"]) > 0.7


# -- LazyDataset over the seed's layout, _load_file overridden, into collate_molecules -------------
class TokenFiles(LazyDataset):
    """The seed's extension point: one molecule per text file, ``"<class id>\\t<token ids>"``."""

    def _load_file(self, path: Path) -> dict:
        label, ids = path.read_text().split("\t")
        return {"input_ids": [int(i) for i in ids.split()], "label": int(label)}


def write_token_files(root: Path, n: int = 48) -> None:
    rng = np.random.default_rng(0)
    (root / "molecules").mkdir()
    for i in range(n):
        ids = rng.integers(5, 20, size=rng.integers(2, 9))
        (root / "molecules" / f"{i}.txt").write_text(f"{int(np.mean(ids >= 12) > 0.5)}\t{' '.join(map(str, ids))}")
    (root / "index.json").write_text(json.dumps([{"file": f"molecules/{i}.txt"} for i in range(n)], indent=2))


class TorchBagOfTokens(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Embedding(20, 8), nn.Linear(8, 2)

    def compute_loss(self, batch):
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return F.cross_entropy(self.out(pooled), batch["labels"])


class JaxBagOfTokens(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed, self.out = nnx.Embed(20, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

    def compute_loss(self, batch):
        mask = batch["attention_mask"][..., None].astype(jnp.float32)
        pooled = (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        return optax.softmax_cross_entropy_with_integer_labels(self.out(pooled), batch["labels"]).mean()


@pytest.mark.parametrize("backend", BACKENDS)
def test_lazy_dataset_of_files_collated_into_integer_label_cross_entropy(backend, tmp_path):
    write_token_files(tmp_path)
    dataset = TokenFiles(tmp_path)
    if backend == "torch":
        loader = DataLoader(dataset, batch_size=8, collate_fn=torch_collate.collate_molecules)
        model = TorchBagOfTokens()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    else:
        loader = jax_impl.data.make_loader(dataset, 8, shuffle=False, prefetch=0)
        model, optimizer = JaxBagOfTokens(nnx.Rngs(0)), optax.adam(0.05)
    first = next(iter(loader))
    assert first["labels"].dtype == (torch.int64 if backend == "torch" else np.int32)
    assert list(np.asarray(first["labels"])) == [dataset[i]["label"] for i in range(8)]
    history = TRAINING[backend].train(model, loader, loader, optimizer, 6)
    assert history["val_loss"][-1] < 0.7 * history["val_loss"][0]


# -- collate_molecules against the seed's ----------------------------------------------------------
def seed_collate_molecules(batch, pad_token_id=0):
    """The seed's collate function, verbatim."""

    # Get max length in batch
    max_len = max(len(item["input_ids"]) for item in batch)

    # Pad sequences
    input_ids = []
    attention_mask = []

    for item in batch:
        seq_len = len(item["input_ids"])
        padding_len = max_len - seq_len

        input_ids.append(item["input_ids"] + [pad_token_id] * padding_len)
        attention_mask.append([1] * seq_len + [0] * padding_len)

    return {
        "input_ids": torch.tensor(input_ids),
        "attention_mask": torch.tensor(attention_mask),
        "labels": torch.tensor([item["label"] for item in batch]),
    }


@pytest.mark.parametrize("labels", [[2, 0, 1], [0.5, -1.25, 3.0], [1, 2.5, 0]], ids=["classes", "floats", "mixed"])
def test_collate_gives_the_seeds_values(labels):
    """Our collate on both backends holds the seed's values; the labels have its dtype (class ids
    int64 on torch, int32 on JAX: its default width); attention_mask is bool where the seed's is int64."""
    records = [{"input_ids": ids, "label": label} for ids, label in zip([[5, 6, 7], [8], [9, 10]], labels, strict=True)]
    expected = {k: v.numpy() for k, v in seed_collate_molecules(records, 3).items()}
    for collate in (torch_collate.collate_molecules, jax_collate.collate_molecules):
        out = {k: np.asarray(v) for k, v in collate(records, 3).items()}
        np.testing.assert_array_equal(out["input_ids"], expected["input_ids"])
        np.testing.assert_array_equal(out["attention_mask"], expected["attention_mask"].astype(bool))
        np.testing.assert_array_equal(out["labels"], expected["labels"])
        width = np.int64 if collate is torch_collate.collate_molecules else np.int32
        assert out["labels"].dtype == (width if expected["labels"].dtype == np.int64 else expected["labels"].dtype)


def test_collated_class_ids_give_the_same_cross_entropy_on_both_backends():
    records = [{"input_ids": [5, 6], "label": c} for c in (2, 0, 1, 2)]
    logits = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    expected = F.cross_entropy(torch.from_numpy(logits), torch_collate.collate_molecules(records)["labels"]).item()
    labels = jax.device_put(jax_collate.collate_molecules(records)["labels"])
    value = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels).mean()
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)


# -- init_weights ----------------------------------------------------------------------------------
def seed_init_weights(module: nn.Module) -> None:
    """The seed's, verbatim."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def test_init_weights_draws_what_the_seeds_draws():
    """``model.apply(init_weights)`` under one seed: bit-identical to the seed's function (a padding
    row, which ours zeroes again as torch does and the seed's would not, is absent here)."""
    initialized = []
    for init_weights in (seed_init_weights, torch_init.init_weights):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2, bias=False))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.fill_(3.0)
        model.apply(init_weights)
        initialized.append(model.state_dict())
    seed, ours = initialized
    assert all(torch.equal(seed[k], ours[k]) for k in seed) and not torch.any(ours["1.weight"] == 3.0)


# -- CombinedLoss ----------------------------------------------------------------------------------
class SeedCombinedLoss(nn.Module):
    """The seed's, verbatim."""

    def __init__(self, losses, weights=None):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = weights or {name: 1.0 for name in losses}

    def forward(self, predictions, targets):
        loss_values = {}
        total_loss = 0.0

        for name, loss_fn in self.losses.items():
            loss = loss_fn(predictions[name], targets[name])
            loss_values[name] = loss
            total_loss = total_loss + self.weights[name] * loss

        return total_loss, loss_values


class LearnedScaleMSE(nn.Module):
    """A loss with a parameter: MSE weighted by a learned log-variance (Kendall et al.)."""

    def __init__(self):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(()))

    def forward(self, prediction, target):
        return torch.exp(-self.log_var) * F.mse_loss(prediction, target) + self.log_var


@pytest.mark.parametrize("weights", [None, {"value": 2.0, "class": 0.5}])
def test_combined_loss_is_the_seeds(weights):
    rng = np.random.default_rng(0)
    logits, values = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    targets = {"class": torch.from_numpy(rng.integers(0, 4, 6)), "value": torch.from_numpy(values[::-1].copy())}
    results = []
    for combined in (SeedCombinedLoss, torch_losses.CombinedLoss):
        torch.manual_seed(0)
        loss = combined({"value": LearnedScaleMSE(), "class": nn.CrossEntropyLoss()}, weights)
        predictions = {
            "value": torch.tensor(values, requires_grad=True),
            "class": torch.tensor(logits, requires_grad=True),
        }
        total, parts = loss(predictions, targets)
        total.backward()
        results.append((total, parts, predictions, [name for name, _ in loss.named_parameters()]))
    (total, parts, predictions, names), (our_total, our_parts, our_predictions, our_names) = results
    assert our_names == names == ["losses.value.log_var"]
    torch.testing.assert_close(our_total, total, rtol=0, atol=0)
    assert list(our_parts) == list(parts) and all(torch.equal(our_parts[k], parts[k]) for k in parts)
    assert all(torch.equal(our_predictions[k].grad, predictions[k].grad) for k in predictions)


class TorchLearnedScale(torch_models.BaseModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net, self.criterion = nn.Linear(8, 1), torch_losses.CombinedLoss({"y": LearnedScaleMSE()})

    def forward(self, batch):
        return {"y": self.net(batch["x"])[:, 0]}

    def compute_loss(self, batch):
        return self.criterion(self(batch), batch)[0]


def test_a_loss_with_parameters_trains_moves_and_saves_with_its_torch_model(tmp_path):
    model = TorchLearnedScale()
    batches = array_batches(points(32, 0), 8)
    torch_impl.training.train(model, batches, None, torch.optim.Adam(model.parameters(), lr=0.05), 3)
    log_var = model.criterion.losses["y"].log_var
    assert log_var.item() != 0.0  # trained by the optimizer over model.parameters()
    model.save(tmp_path / "model.safetensors")
    assert (
        weights("torch", TorchLearnedScale().load(tmp_path / "model.safetensors"))["criterion.losses.y.log_var"]
        == log_var.item()
    )
    model.to(torch.float64)  # as a device move would
    assert log_var.dtype == torch.float64


class JaxLearnedScaleMSE(nnx.Module):
    def __init__(self):
        self.log_var = nnx.Param(jnp.zeros(()))

    def __call__(self, prediction, target):
        return jnp.exp(-self.log_var[...]) * jnp.mean((prediction - target) ** 2) + self.log_var[...]


def test_a_loss_with_parameters_trains_with_its_jax_model():
    class LearnedScale(jax_models.BaseModel):
        def __init__(self, rngs: nnx.Rngs):
            super().__init__()
            self.net, self.criterion = nnx.Linear(8, 1, rngs=rngs), jax_losses.CombinedLoss({"y": JaxLearnedScaleMSE()})

        def compute_loss(self, batch):
            return self.criterion({"y": self.net(batch["x"])[:, 0]}, batch)[0]

    model = LearnedScale(nnx.Rngs(0))
    jax_impl.training.train(model, array_batches(points(32, 0), 8), None, optax.adam(0.05), 3)
    assert float(model.criterion.losses["y"].log_var[...]) != 0.0


# -- masked_cross_entropy --------------------------------------------------------------------------
def seed_masked_cross_entropy(logits, targets, mask):
    """The seed's, verbatim."""
    loss = F.cross_entropy(
        logits.view(-1, logits.size(-1)),
        targets.view(-1),
        reduction="none",
    )

    loss = loss.view(targets.shape)
    loss = (loss * mask).sum() / mask.sum()

    return loss


@pytest.mark.parametrize("mask_dtype", [np.int64, np.bool_, np.float32], ids=["int64", "bool", "float32"])
def test_masked_cross_entropy_is_the_seeds(mask_dtype):
    """With the seed's int64 attention mask (its collate's), ours collate's bool, and float weights;
    gradients on torch, values on JAX."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
    targets, mask = rng.integers(0, 7, (3, 5)), (rng.random((3, 5)) < 0.6).astype(mask_dtype)
    mask[0, 0] = 1
    computed = []
    for fn in (seed_masked_cross_entropy, torch_losses.masked_cross_entropy):
        x = torch.tensor(logits, requires_grad=True)
        value = fn(x, torch.from_numpy(targets), torch.from_numpy(mask))
        value.backward()
        computed.append((value.detach().numpy(), x.grad.numpy()))
    (expected, expected_grad), (value, grad) = computed
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-7)
    jax_value = jax_losses.masked_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(jax_value), expected, rtol=1e-6)
