"""The seed's basic training loop on the torch side: your own nn.Module with compute_loss(batch),
a DataLoader of dict batches and torch.optim.Adam, passed to ``train`` as the seed writes it.

Run: ``python examples/seed_train_torch.py`` (a few seconds on a CPU).
"""

# expect: ^Epoch 4: train=\d+\.\d{4}, val=\d+\.\d{4}$

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from torch_impl.training import train


class Points(Dataset):
    """``{"x": float32 [8], "y": float32 []}`` items with y = sin(2 * mean(x))."""

    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=generator)
        self.y = torch.sin(2 * self.x.mean(dim=1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"y": self.net(batch["x"]).squeeze(-1)}

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch)["y"], batch["y"])


def main() -> None:
    torch.manual_seed(0)
    model = Regressor()
    train_loader = DataLoader(Points(1024, seed=0), batch_size=32, shuffle=True)
    val_loader = DataLoader(Points(256, seed=1), batch_size=64)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = train(model, train_loader, val_loader, optimizer, num_epochs=5, device=torch.device("cpu"))
    for epoch, (train_loss, val_loss) in enumerate(zip(history["train_loss"], history["val_loss"])):
        print(f"Epoch {epoch}: train={train_loss:.4f}, val={val_loss:.4f}")
    assert history["val_loss"][-1] < history["val_loss"][0], "the model should learn"


if __name__ == "__main__":
    main()
