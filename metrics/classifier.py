"""A small digit classifier trained with this toolkit, used as an offline feature detector.

The Inception network behind FID cannot be downloaded everywhere. For MNIST-like data a
classifier trained here gives features for a Frechet distance instead; that score is not FID
and must not be called FID (docs/exposure.md calls it FD_MNIST). The saved detector has the
interface `fid.py --detector` expects (metrics/detector.py): a pickled module called as
`net(images, return_features=True)` on uint8 [N, 3, H, W] images (grey images arrive with the
channel repeated), returning [N, feature_dim] features, and class probabilities otherwise.
"""

import dataclasses

import numpy as np
import torch

import dnnlib
from training.dataset import ImageFolderDataset

from .detector import MetricError, pickle_torchscript


class DigitClassifier(torch.nn.Module):
    """Three 3x3 conv + max-pool stages, a `feature_dim` ReLU layer (the features) and a linear head."""

    def __init__(self, resolution: int = 32, num_classes: int = 10, channels=(16, 32, 64), feature_dim: int = 64):
        super().__init__()
        layers, cin = [], 1
        for cout in channels:
            layers += [torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            cin = cout
        self.conv = torch.nn.Sequential(*layers)
        side = resolution // 2 ** len(channels)
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(cin * side * side, feature_dim), torch.nn.ReLU())
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def embed(self, x):
        """Features [N, feature_dim] of images with pixel values 0..255 (colour or repeated grey
        is averaged to one channel)."""
        return self.features(self.conv(x.to(torch.float32).mean(dim=1, keepdim=True) / 127.5 - 1))

    def forward(self, x, return_features: bool = False, no_output_bias: bool = False):
        feats = self.embed(x)
        if return_features:
            return feats
        logits = feats @ self.head.weight.t()
        if not no_output_bias:
            logits = logits + self.head.bias
        return torch.softmax(logits, dim=1)

    def logits(self, x):
        return self.head(self.embed(x))


@dataclasses.dataclass
class TrainedClassifier:
    net: DigitClassifier
    accuracy: float         # On the held-out images.
    num_train: int
    num_holdout: int


def load_labelled_images(path):
    """(uint8 images [N, C, H, W], int64 class labels [N]) of a dataset made by dataset_tool.py."""
    try:
        dataset = ImageFolderDataset(path, use_labels=True)
        if not dataset.has_labels or not dataset.has_onehot_labels:
            raise MetricError(f'{path}: the classifier needs class labels (dataset.json with integer labels)')
        images = np.stack([dataset[i][0] for i in range(len(dataset))])
        labels = np.array([dataset.get_details(i).raw_label for i in range(len(dataset))], dtype=np.int64)
    except (IOError, ValueError) as err:
        raise MetricError(f'{path}: {str(err).splitlines()[0]}') from None
    if images.shape[2] != images.shape[3] or images.shape[2] % 8:
        raise MetricError(f'{path}: images are {images.shape[3]}x{images.shape[2]}; the classifier needs square images, a multiple of 8 pixels')
    return torch.from_numpy(images), torch.from_numpy(labels)


def _shifted(images, gen, max_shift=2):
    """Each image moved by a random whole-pixel offset (edge padding), against overfitting 8k images."""
    side = images.shape[-1]
    padded = torch.nn.functional.pad(images.to(torch.float32), [max_shift] * 4, mode='replicate')
    dx, dy = torch.randint(0, 2 * max_shift + 1, [2, images.shape[0]], generator=gen).tolist()
    return torch.stack([p[:, y:y + side, x:x + side] for p, x, y in zip(padded, dx, dy)])


def accuracy(net, images, labels, batch=500):
    """Fraction of `images` whose most probable class is the label."""
    with torch.no_grad():
        hits = sum(int((net.logits(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum()) for i in range(0, len(images), batch))
    return hits / max(len(images), 1)


def train_classifier(images, labels, *, holdout=2000, epochs=15, batch=128, lr=2e-3, seed=0, verbose=False):
    """Train a DigitClassifier on all but a seeded random `holdout` images; returns TrainedClassifier
    with the held-out accuracy. Adam, cross-entropy, random shifts of up to 2 pixels."""
    n = len(images)
    if not 0 <= holdout < n:
        raise MetricError(f'--holdout must be between 0 and {n - 1} (the dataset has {n} images), got {holdout}')
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    test_idx, train_idx = order[:holdout], order[holdout:]
    num_classes = int(labels.max()) + 1
    net = DigitClassifier(resolution=images.shape[-1], num_classes=num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * ((len(train_idx) + batch - 1) // batch))
    for epoch in range(epochs):
        net.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        total = 0.0
        for start in range(0, len(perm), batch):
            idx = perm[start:start + batch]
            loss = torch.nn.functional.cross_entropy(net.logits(_shifted(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if verbose:
            print(f'epoch {epoch + 1}/{epochs}: loss {total / len(train_idx):.4f}')
    net.eval().requires_grad_(False)
    acc = accuracy(net, images[test_idx], labels[test_idx]) if holdout else float('nan')
    return TrainedClassifier(net=net, accuracy=acc, num_train=len(train_idx), num_holdout=holdout)


def save_detector(net, path):
    """Write `net` as a detector pickle (TorchScript inside, loads with nothing but torch)."""
    data = pickle_torchscript(torch.jit.script(net.eval()))
    with dnnlib.util.atomic_write(path) as f:
        f.write(data)
    return path
