"""GRAD's network, its feature refinement and its training loop (torch).

The network maps standardised feature maps ``x`` of shape ``(B, C, H, W)`` to
their normal representation:

- a *global coordinate* per image: a two-layer tanh MLP of the image's mean
  feature, in ``[-1, 1]^2``, samples the **global grid** ``(C*H*W, G, G)``
  bilinearly: one whole ``C x H x W`` feature map per image, so that images of
  different products are sent to different regions of one grid;
- a *local coordinate* per patch: the same MLP shape as 1x1 convolutions, in
  ``[-1, 1]^2``, samples the **local grid** ``(C, L, L)``: a C-vector per patch
  that keeps fine detail;
- the two are concatenated (``2C`` channels) and **fused** by a 1x1
  convolution to ``hidden_channels``, residual blocks of two 3x3 convolutions
  with batch normalisation, and a 1x1 convolution back to ``C``: the
  reconstruction ``r``.

During training the local coordinates are **jittered** (Gaussian noise of
``jitter_std``, on half of the batches) for a smoother representation.
**Feature refinement** pulls ``r`` back to ``x`` where they agree::

    agree = [mean_c (r - x)^2 < refine_threshold]     (0 or 1 per patch)
    s     = mse_weight * agree + cosine_weight * cos(r, x)
    out   = s * x + (1 - s) * r

The training loss is the mean squared error between ``out`` and ``x`` over
normal images; a patch's anomaly distance is ``||out - x||``.
"""

import copy

import torch
from torch import nn
from torch.nn import functional

from crdistance._progress import EarlyStopping, Progress

__all__ = ["DistanceModule", "GRADNet", "patch_distances", "refine", "train_grad"]

_JITTER_PROBABILITY = 0.5
"""Share of training batches whose local coordinates are jittered (the paper's)."""
_MAX_GRAD_NORM = 0.1
"""Gradient clipping norm (the authors' configuration)."""


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch normalisation and a skip connection."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = functional.relu(self.bn1(self.conv1(x)))
        return functional.relu(self.bn2(self.conv2(out)) + x)


class GRADNet(nn.Module):
    """Standardised feature maps ``(B, C, H, W)`` to their reconstruction
    (before refinement)."""

    def __init__(self, n_features, height, width, *, local_grid_size,
                 global_grid_size, hidden_channels, n_blocks):
        super().__init__()
        c = n_features
        self.map_shape = (c, height, width)
        self.local_grid = nn.Parameter(nn.init.xavier_normal_(
            torch.empty(1, c, local_grid_size, local_grid_size)))
        self.global_grid = nn.Parameter(nn.init.xavier_normal_(
            torch.empty(1, c * height * width, global_grid_size, global_grid_size)))
        self.global_coordinates = nn.Sequential(
            nn.Linear(c, c), nn.Tanh(), nn.Linear(c, 2), nn.Tanh())
        self.local_coordinates = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.Tanh(), nn.Conv2d(c, 2, 1), nn.Tanh())
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * c, hidden_channels, 1, bias=False),
            nn.BatchNorm2d(hidden_channels), nn.ReLU())
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden_channels) for _ in range(n_blocks)])
        self.recover = nn.Conv2d(hidden_channels, c, 1, bias=False)

    def forward(self, x, jitter=None):
        """Reconstruction of ``x``; ``jitter`` (B, 2, H, W) is added to the
        local coordinates when given."""
        b, c, h, w = x.shape
        global_xy = self.global_coordinates(x.mean(dim=(2, 3)))
        local_xy = self.local_coordinates(x)
        if jitter is not None:
            local_xy = local_xy + jitter
        # One global sample per image: a (C*H*W)-vector, reshaped to a map.
        global_part = functional.grid_sample(
            self.global_grid, global_xy.reshape(1, b, 1, 2), align_corners=False)
        global_part = global_part.reshape(c * h * w, b).transpose(0, 1)
        global_part = global_part.reshape(b, c, h, w)
        local_part = functional.grid_sample(
            self.local_grid.expand(b, -1, -1, -1), local_xy.permute(0, 2, 3, 1),
            align_corners=False)
        fused = self.fuse(torch.cat([global_part, local_part], dim=1))
        return self.recover(self.blocks(fused))


def refine(reconstruction, x, *, mse_weight, cosine_weight, threshold):
    """Feature refinement (see the module docstring): the refined output."""
    mse = ((reconstruction - x) ** 2).mean(dim=1, keepdim=True)
    agree = (mse < threshold).to(x.dtype)
    cosine = functional.cosine_similarity(reconstruction, x, dim=1).unsqueeze(1)
    similarity = mse_weight * agree + cosine_weight * cosine
    return similarity * x + (1 - similarity) * reconstruction


def patch_distances(net, x, params):
    """Anomaly distance of every patch of standardised maps ``x``: (B, H, W)."""
    refined = refine(net(x), x, mse_weight=params["mse_weight"],
                     cosine_weight=params["cosine_weight"],
                     threshold=params["refine_threshold"])
    return torch.linalg.vector_norm(refined - x, dim=1)


class DistanceModule(nn.Module):
    """Standardised maps (B, C, H, W) to patch distances (B, H, W): the network,
    the refinement and the norm, as one module (for export)."""

    def __init__(self, net, params):
        super().__init__()
        self.net = net
        self.params = {key: float(params[key]) for key in
                       ("mse_weight", "cosine_weight", "refine_threshold")}

    def forward(self, x):
        return patch_distances(self.net, x, self.params)


def _loss(net, x, params, jitter=None):
    refined = refine(net(x, jitter), x, mse_weight=params["mse_weight"],
                     cosine_weight=params["cosine_weight"],
                     threshold=params["refine_threshold"])
    return functional.mse_loss(refined, x)


def _batches(order, batch_size):
    """Index batches of about ``batch_size``: the remainder is spread over the
    others, so that no batch is smaller than ``batch_size`` (batch norm needs
    more than one value per channel)."""
    n_batches = max(order.shape[0] // batch_size, 1)
    return torch.tensor_split(order, n_batches)


def train_grad(train, validation, params, *, progress):
    """Train a GRAD network on standardised maps; return it and its record.

    ``train`` and ``validation`` are float32 tensors ``(n, C, H, W)``
    (``validation`` None or empty for none); ``params`` the estimator's
    parameters and a ``seed``. Returns the network of the best epoch (lowest
    validation loss, or training loss without validation), in eval mode, and
    a dict of per-epoch curves with ``n_iter`` and ``best_epoch``.
    """
    torch.manual_seed(params["seed"])
    _, c, h, w = train.shape
    net = GRADNet(c, h, w, local_grid_size=params["local_grid_size"],
                  global_grid_size=params["global_grid_size"],
                  hidden_channels=params["hidden_channels"],
                  n_blocks=params["n_blocks"]).to(params["device"])
    grids = [net.local_grid, net.global_grid]
    others = [p for name, p in net.named_parameters() if not name.endswith("_grid")]
    optimizer = torch.optim.Adam([
        {"params": grids, "lr": params["grid_learning_rate"]},
        {"params": others, "lr": params["learning_rate"]},
    ])
    generator = torch.Generator().manual_seed(params["seed"])
    # Batch norm needs two values per channel: with one patch per image, two images.
    batch_size = max(params["batch_size"], 2 if h * w == 1 else 1)
    validate = validation is not None and validation.shape[0] > 0
    curves = {"loss": [], "validation_loss": []}
    stopper = EarlyStopping(tol=params["tol"], patience=params["n_iter_no_change"],
                            enabled=params["early_stopping"],
                            snapshot=lambda: copy.deepcopy(net.state_dict()))
    bar = Progress("train GRAD", params["max_epochs"], unit="epochs",
                   enabled=progress)
    for epoch in range(params["max_epochs"]):
        net.train()
        order = torch.randperm(train.shape[0], generator=generator)
        total, n_seen = 0.0, 0
        for rows in _batches(order, batch_size):
            x = train[rows].to(params["device"])
            jitter = None
            if torch.rand(1, generator=generator).item() < _JITTER_PROBABILITY:
                jitter = params["jitter_std"] * torch.randn(
                    (x.shape[0], 2, h, w), generator=generator).to(x.device)
            loss = _loss(net, x, params, jitter)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), _MAX_GRAD_NORM)
            optimizer.step()
            total += float(loss.detach()) * x.shape[0]
            n_seen += x.shape[0]
        curves["loss"].append(total / n_seen)
        monitored = curves["loss"][-1]
        if validate:
            monitored = evaluate_loss(net, validation, params)
            curves["validation_loss"].append(monitored)
        stop = stopper.update(monitored, epoch + 1)
        bar.update(epoch + 1)
        if stop:
            break
    bar.close()
    net.load_state_dict(stopper.best_state)
    net.eval()
    return net, {**curves, "n_iter": len(curves["loss"]),
                 "best_epoch": stopper.best_epoch}


def evaluate_loss(net, maps, params, batch_size=64):
    """Mean training loss of ``maps`` in eval mode, without jitter."""
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, maps.shape[0], batch_size):
            x = maps[start:start + batch_size].to(params["device"])
            total += float(_loss(net, x, params)) * x.shape[0]
    return total / maps.shape[0]
