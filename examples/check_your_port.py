"""Check your own port: a small PyTorch CNN and its Flax NNX port, compared the way you would check yours.

    python examples/check_your_port.py [--steps 200] [--plot drift.png]

1. transfer_weights: the dry-run table of which torch tensor goes where, then the copy.
2. compare_forward: every layer's input and output on both sides; the first that diverges.
3. compare_gradients: the loss and every parameter's gradient.
4. compare_training: a few hundred Adam steps on both sides, judged against the float32 noise floor
   measured by rerunning torch with its weights moved by one ulp; a plot of both.

Exit status 0 when the port agrees everywhere. Replace the two models, the data and the loss
functions with yours.
"""

# expect: ^The port agrees\.$

from __future__ import annotations

import argparse
import sys

import numpy as np
import optax
import torch
from flax import nnx
from torch import nn

from ml_patterns_app.porting import compare_forward, compare_gradients, compare_training, transfer_weights


class TorchNet(nn.Module):
    """Images [B, 1, 8, 8] -> logits [B, 4]."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Linear(16, 4)

    def forward(self, images):
        x = torch.relu(self.bn(self.conv1(images)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class NnxNet(nnx.Module):
    """The port: images [B, 8, 8, 1] (channels last, as flax convolutions want them) -> logits [B, 4]."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv_in = nnx.Conv(1, 8, (3, 3), padding=1, rngs=rngs)
        # torch's BatchNorm momentum 0.1 weighs the new batch; nnx's momentum weighs the old value.
        self.norm = nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.conv_down = nnx.Conv(8, 16, (3, 3), strides=2, padding=1, rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, images):
        x = nnx.relu(self.norm(self.conv_in(images)))
        x = nnx.relu(self.conv_down(x))
        return self.head(x.mean(axis=(1, 2)))


def make_batches(steps: int, size: int = 16, seed: int = 0):
    """(torch batches NCHW, nnx batches NHWC); the label is which quadrant is brightest."""
    rng = np.random.default_rng(seed)
    torch_batches, nnx_batches = [], []
    for _ in range(steps):
        images = rng.normal(size=(size, 1, 8, 8)).astype(np.float32)
        labels = images[:, 0].reshape(size, 2, 4, 2, 4).mean(axis=(2, 4)).reshape(size, 4).argmax(1)
        torch_batches.append((images, labels))
        nnx_batches.append((images.transpose(0, 2, 3, 1), labels))
    return torch_batches, nnx_batches


def loss_torch(model, batch):
    images, labels = batch
    return nn.functional.cross_entropy(model(images), labels)


def loss_jax(model, batch):
    images, labels = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(images), labels).mean()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps to compare (default 200)")
    parser.add_argument("--plot", help="write the losses and the drift against the noise floor to this PNG")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch_net, nnx_net = TorchNet(), NnxNet(nnx.Rngs(0))
    print(transfer_weights(torch_net, nnx_net, dry_run=True), end="\n\n")
    transfer_weights(torch_net, nnx_net)

    torch_batches, nnx_batches = make_batches(args.steps)
    images, labels = torch_batches[0]
    forward = compare_forward(torch_net, nnx_net, images, nnx_inputs=nnx_batches[0][0])
    print(forward, end="\n\n")
    gradients = compare_gradients(torch_net, nnx_net, (images, labels), loss_torch, loss_jax, nnx_batch=nnx_batches[0])
    print(gradients.where, end="\n\n")

    training = compare_training(
        torch_net,
        nnx_net,
        lambda params: torch.optim.Adam(params, lr=1e-3),
        optax.adam(1e-3),
        torch_batches,
        loss_torch,
        loss_jax,
        nnx_batches=nnx_batches,
    )
    print(training)
    if args.plot:
        print(f"plot: {training.plot(args.plot)}")
    passed = forward.passed and gradients.passed and training.passed
    print("\nThe port agrees." if passed else "\nThe port DIVERGES: see above.")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
