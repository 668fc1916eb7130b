"""The networks and the training loop of :class:`ContrastiveEmbedder` (CSE).

The embedding network standardises each patch feature and applies two 1x1
convolutions (linear maps of the channel axis, so the patch grid is kept) with
a leaky ReLU between them. Training adds a decoder of frozen random weights
that must reconstruct the standardised input from the embedding of normal
patches, so that the embedding keeps the information of its input and cannot
collapse to a constant.

With ``z`` the network's output, ``e = z / ||z||`` its direction and ``c`` the
unit mean direction of the normal patches of a batch, the loss of a batch of
normal patches N and defective patches A is::

    L = mean_N (1 - <e, c>) + mean_A max(0, <e, c> - margin)
        + reconstruction_weight * mean_N ||decoder(z) - x_std||^2 / d

normal embeddings are pulled together, defective ones pushed away from them,
and the normal embeddings stay decodable. The transformer outputs ``e``.
"""

import copy

import torch
from torch import nn
from torch.nn import functional

from crdistance._progress import EarlyStopping, Progress

__all__ = ["EmbeddingNet", "random_decoder", "train_embedding"]

_SLOPE = 0.2
"""Negative slope of the leaky ReLUs."""


class EmbeddingNet(nn.Module):
    """Patch features (..., d) to embeddings (..., n_components), before their
    scaling to unit length."""

    def __init__(self, mean, scale, hidden_size, n_components):
        super().__init__()
        n_features = mean.shape[0]
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.hidden = nn.Linear(n_features, hidden_size)
        self.output = nn.Linear(hidden_size, n_components)

    def standardize(self, x):
        return (x - self.mean) / self.scale

    def forward(self, x):
        hidden = functional.leaky_relu(self.hidden(self.standardize(x)), _SLOPE)
        return self.output(hidden)


def random_decoder(n_components, hidden_size, n_features, seed):
    """The frozen decoder: random weights (PyTorch's default initialisation)
    drawn from ``seed``, never trained."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        decoder = nn.Sequential(
            nn.Linear(n_components, hidden_size), nn.LeakyReLU(_SLOPE),
            nn.Linear(hidden_size, n_features),
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return decoder.requires_grad_(False)


def _loss(net, decoder, batch, margin, reconstruction_weight):
    """The three terms of the loss (see the module docstring), as tensors."""
    raw = net(batch["normal"])
    embedded = functional.normalize(raw, dim=-1, eps=1e-12)
    center = functional.normalize(embedded.mean(dim=0), dim=0, eps=1e-12)
    pull = (1 - embedded @ center).mean()
    defective = functional.normalize(net(batch["defective"]), dim=-1, eps=1e-12)
    push = functional.relu(defective @ center - margin).mean()
    reconstruction = functional.mse_loss(decoder(raw), net.standardize(batch["normal"]))
    return pull, push, reconstruction_weight * reconstruction


def train_embedding(data, params, *, progress):
    """Train the embedding net; return it with its training record.

    ``data`` holds float32 tensors ``normal``, ``defective`` (training rows)
    and ``val_normal``, ``val_defective`` (validation rows, possibly empty);
    ``params`` the estimator's parameters and a ``seed``. Returns the net of
    the best epoch (lowest validation loss, or training loss without
    validation), the decoder, and a dict of per-epoch curves.
    """
    seed = params["seed"]
    torch.manual_seed(seed)
    normal = data["normal"]
    mean = normal.mean(dim=0)
    scale = normal.std(dim=0).clamp_min(1e-6)
    net = EmbeddingNet(mean, scale, params["hidden_size"], params["n_components"])
    decoder = random_decoder(params["n_components"], params["hidden_size"],
                             normal.shape[1], seed + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=params["learning_rate"])
    generator = torch.Generator().manual_seed(seed)
    batch_size = min(params["batch_size"], normal.shape[0])
    n_batches = max(normal.shape[0] // batch_size, 1)
    terms = ("pull", "push", "reconstruction")
    curves = {"loss": [], "validation_loss": [],
              **{f"{term}_loss": [] for term in terms}}
    validate = data["validation"] is not None
    bar = Progress("train embedding", params["max_epochs"], unit="epochs",
                   enabled=progress)
    stopper = EarlyStopping(tol=params["tol"], patience=params["n_iter_no_change"],
                            enabled=params["early_stopping"],
                            snapshot=lambda: copy.deepcopy(net.state_dict()))
    for epoch in range(params["max_epochs"]):
        order = torch.randperm(normal.shape[0], generator=generator)
        sums = torch.zeros(3)
        net.train()
        for batch in range(n_batches):
            rows = order[batch * batch_size:(batch + 1) * batch_size]
            drawn = torch.randint(data["defective"].shape[0], (rows.shape[0],),
                                  generator=generator)
            batch_data = {"normal": normal[rows], "defective": data["defective"][drawn]}
            parts = _loss(net, decoder, batch_data, params["margin"],
                          params["reconstruction_weight"])
            optimizer.zero_grad(set_to_none=True)
            sum(parts).backward()
            optimizer.step()
            sums += torch.stack([part.detach() for part in parts])
        for term, value in zip(terms, (sums / n_batches).tolist(), strict=True):
            curves[f"{term}_loss"].append(value)
        curves["loss"].append(float(sum(curves[f"{t}_loss"][-1] for t in terms)))
        monitored = curves["loss"][-1]
        if validate:
            net.eval()
            with torch.no_grad():
                monitored = float(sum(_loss(
                    net, decoder, data["validation"], params["margin"],
                    params["reconstruction_weight"])))
            curves["validation_loss"].append(monitored)
        stop = stopper.update(monitored, epoch + 1)
        bar.update(epoch + 1)
        if stop:
            break
    bar.close()
    net.load_state_dict(stopper.best_state)
    net.eval()
    return net, decoder, {**curves, "n_iter": len(curves["loss"]),
                          "best_epoch": stopper.best_epoch}
