"""CSE's contrastively trained patch embedding, as a scikit-learn transformer."""

from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from crdistance._progress import show_progress
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import validate_features

try:
    import torch

    from crdistance.featurizer._contrastive_net import EmbeddingNet, train_embedding
except ImportError as exc:
    if exc.name != "torch":
        raise
    raise ImportError(
        "ContrastiveEmbedder needs torch; install it with "
        "pip install 'crdistance[vision]'."
    ) from exc

__all__ = ["ContrastiveEmbedder"]

class ContrastiveEmbedder(TransformerMixin, BaseEstimator):
    """Learn a patch embedding that separates normal from defective patches (CSE).

    The embedding of CSE (Thomine & Snoussi, 2024): two 1x1 convolutions on
    pretrained patch features (each patch mapped alone, so the patch grid is
    kept), trained with a contrastive cosine loss (normal patches pulled
    together, patches of synthetic defects pushed away from them) and a
    decoder of frozen random weights that must reconstruct the normal features
    from their embedding, so that it cannot collapse. The output has unit
    length; :class:`~crdistance.kmeans.KMeansDetector` (the paper's scorer),
    :class:`~crdistance.CRDetector` or :class:`~crdistance.LocalCRDetector`
    score it.

    Parameters
    ----------
    n_components : int, default=64
        Dimension of the embedding.
    hidden_size : int, default=256
        Channels between the two convolutions (and in the decoder).
    margin : float in [-1, 1), default=0.0
        Cosine similarity to the normal direction above which a defective
        patch is penalised.
    reconstruction_weight : float >= 0, default=1.0
        Weight of the decoder's reconstruction error in the loss.
    min_share : float in (0, 1], default=0.5
        A patch of a defective image counts as defective when at least this
        share of it lies inside the defect; the other patches of defective
        images are not used.
    learning_rate : float, default=1e-3
        Step size of Adam.
    batch_size : int, default=4096
        Normal patches per step (as many defective patches are drawn with
        replacement).
    max_epochs : int, default=20
        Passes over the normal training patches at most.
    early_stopping : bool, default=True
        Stop when the validation loss has not improved by `tol` for
        `n_iter_no_change` epochs. Either way the weights of the epoch of least
        validation loss (training loss without validation) are kept.
    validation_fraction : float in [0, 0.5), default=0.1
        Share of the normal and of the defective images (or rows) held out for
        the validation loss; 0, or too few samples to hold out one of each,
        monitors the training loss.
    n_iter_no_change : int, default=3
        Epochs without improvement before stopping.
    tol : float, default=1e-4
        Least improvement of the monitored loss that counts.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the frozen decoder, the validation split,
        the batches and the feature-space defects. An int makes ``fit``
        reproducible.
    progress : bool or "auto", default="auto"
        Print the epochs to stderr; ``"auto"`` when stderr is a terminal.

    Attributes
    ----------
    mean_, scale_ : ndarray of shape (`n_features_in_`,)
        Standardisation of the input features (training mean and standard
        deviation of the normal patches).
    coefs_ : list of two ndarrays, (d, hidden_size) and (hidden_size, n_components)
        Weights of the two convolutions, as in
        :class:`~sklearn.neural_network.MLPRegressor`.
    intercepts_ : list of two ndarrays, (hidden_size,) and (n_components,)
        Their biases.
    decoder_coefs_, decoder_intercepts_ : list of ndarrays
        The frozen random decoder after training (equal to its initialisation:
        it is never trained).
    loss_curve_ : list of float
        Training loss of each epoch; ``pull_loss_curve_``,
        ``push_loss_curve_`` and ``reconstruction_loss_curve_`` hold its three
        terms (the last one weighted).
    validation_loss_curve_ : list of float
        Validation loss of each epoch; empty without validation.
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch (from 1) whose weights were kept.
    n_defective_patches_ : int
        Defective training patches used; ``defect_source_`` says where they
        came from: ``"given"`` or ``"features"``.
    n_features_in_ : int
        Dimension d of the input features.
    n_features_out_ : int
        `n_components`.

    See Also
    --------
    crdistance.model_selection.defect_training_set : Features of normal images
        and of defective copies, the paper's training data.
    crdistance.kmeans.KMeansDetector : CSE's scorer.

    Notes
    -----
    The paper's defects are made in image space: pass the features of
    defective copies of the training images and each patch's share inside its
    defect to ``fit`` (:func:`~crdistance.model_selection.defect_training_set`
    makes both). In a pipeline fitted on images alone the embedder only sees
    features; it then makes its own defects in feature space: for patch maps,
    one copy of each training image with a random blob of patches moved by
    Gaussian noise of 0.5 to 2 feature standard deviations (as SimpleNet
    does); for 2-D input, a noisy copy of every row.

    Training runs in torch on the CPU, seeded; ``transform`` is two matrix
    products in NumPy and needs no torch. Training cost is about
    ``max_epochs * n_patches * 6 * (d + n_components) * hidden_size`` flops
    (a few seconds per epoch for 500,000 patches of d = 128).

    References
    ----------
    .. [1] S. Thomine, H. Snoussi. "CSE: Surface Anomaly Detection with
       Contrastively Selected Embedding", VISAPP 2024, arXiv 2403.01859.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.featurizer import ContrastiveEmbedder
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(16, 6, 6, 8)).astype(np.float32)
    >>> embedder = ContrastiveEmbedder(n_components=4, max_epochs=3,
    ...                                random_state=0, progress=False)
    >>> embedding = embedder.fit_transform(normal)
    >>> embedding.shape
    (16, 6, 6, 4)
    >>> bool(np.allclose(np.linalg.norm(embedding, axis=-1), 1, atol=1e-5))
    True
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden_size": [Interval(Integral, 1, None, closed="left")],
        "margin": [Interval(Real, -1, 1, closed="left")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "min_share": [Interval(Real, 0, 1, closed="right")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 0.5, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "progress": ["boolean", StrOptions({"auto"})],
    }

    def __init__(self, *, n_components=64, hidden_size=256, margin=0.0,
                 reconstruction_weight=1.0, min_share=0.5, learning_rate=1e-3,
                 batch_size=4096, max_epochs=20, early_stopping=True,
                 validation_fraction=0.1, n_iter_no_change=3, tol=1e-4,
                 random_state=None, progress="auto"):
        self.n_components = n_components
        self.hidden_size = hidden_size
        self.margin = margin
        self.reconstruction_weight = reconstruction_weight
        self.min_share = min_share
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.progress = progress

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, defective=None, defect_shares=None):
        """Train the embedding on normal features and defective ones.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Features of normal samples or images.
        y : None
            Ignored, present for API consistency.
        defective : array-like of shape (n_defective, ..., n_features) or None
            Features of defective samples (images with synthetic defects, of
            the patch shape of `X`); None makes defects in feature space (see
            Notes).
        defect_shares : array-like of shape defective.shape[:-1] or None
            Share of each defective patch (or row) inside its defect, in
            [0, 1]; None counts every row of `defective` as defective.

        Returns
        -------
        self : ContrastiveEmbedder
            The fitted embedder.
        """
        X_rows, patch_shape = validate_features(self, X, reset=True)
        X_maps = np.asarray(X_rows, dtype=np.float32).reshape(
            (*(patch_shape or X_rows.shape[:1]), -1))
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        if defective is None:
            if defect_shares is not None:
                raise ValueError("defect_shares needs defective features.")
            self.defect_source_ = "features"
            defective, defect_shares = _feature_defects(X_maps, rng)
        else:
            self.defect_source_ = "given"
            defective, defect_shares = self._check_defective(
                defective, defect_shares, X_maps.shape)
        data, self.n_defective_patches_ = self._split(X_maps, defective,
                                                      defect_shares, rng)
        params = {**self.get_params(), "seed": seed}
        with torch.random.fork_rng(devices=[]):  # leaves the user's torch seed
            net, decoder, record = train_embedding(data, params,
                                                   progress=self._show_progress())
        self.mean_ = net.mean.numpy().astype(np.float64)
        self.scale_ = net.scale.numpy().astype(np.float64)
        layers = (net.hidden, net.output)
        # C-contiguous, as a loaded model's: the same products, the same rounding.
        self.coefs_ = [np.ascontiguousarray(layer.weight.detach().numpy().T,
                                            dtype=np.float64) for layer in layers]
        self.intercepts_ = [layer.bias.detach().numpy().astype(np.float64)
                            for layer in layers]
        linear = [decoder[0], decoder[2]]
        self.decoder_coefs_ = [np.ascontiguousarray(layer.weight.numpy().T,
                                                    dtype=np.float64)
                               for layer in linear]
        self.decoder_intercepts_ = [layer.bias.numpy().astype(np.float64)
                                    for layer in linear]
        self.loss_curve_ = record["loss"]
        self.validation_loss_curve_ = record["validation_loss"]
        for term in ("pull", "push", "reconstruction"):
            setattr(self, f"{term}_loss_curve_", record[f"{term}_loss"])
        self.n_iter_, self.best_epoch_ = record["n_iter"], record["best_epoch"]
        self.n_features_out_ = self.n_components
        return self

    def transform(self, X):
        """Embed every row or patch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_images, n_patches,
            n_features) or (n_images, height, width, n_features)
            Features of the training's dimension.

        Returns
        -------
        embedding : ndarray of shape X.shape[:-1] + (n_components,), float32
            Unit-length embeddings, in the shape of `X`.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        rows = np.asarray(X_rows, dtype=np.float32)
        out = np.empty((rows.shape[0], self.n_components), dtype=np.float32)
        weights = [w.astype(np.float32) for w in self.coefs_]
        biases = [b.astype(np.float32) for b in self.intercepts_]
        mean, scale = self.mean_.astype(np.float32), self.scale_.astype(np.float32)
        for start in range(0, rows.shape[0], 65536):
            block = (rows[start:start + 65536] - mean) / scale
            hidden = block @ weights[0] + biases[0]
            hidden = np.where(hidden > 0, hidden, 0.2 * hidden)
            z = hidden @ weights[1] + biases[1]
            norms = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
            out[start:start + 65536] = z / norms
        shape = patch_shape or rows.shape[:1]
        return out.reshape((*shape, self.n_components))

    def embedding_module(self):
        """The embedding as a torch module on feature maps, for export.

        Returns
        -------
        module : torch.nn.Module
            Maps patch features (n, d, h, w) to unit-length embeddings
            (n, n_components, h, w), in eval mode on the CPU.
        """
        check_is_fitted(self)
        net = EmbeddingNet(self.mean_, self.scale_, self.hidden_size,
                           self.n_components)
        with torch.no_grad():
            for layer, weight, bias in zip((net.hidden, net.output), self.coefs_,
                                           self.intercepts_, strict=True):
                layer.weight.copy_(torch.as_tensor(weight.T))
                layer.bias.copy_(torch.as_tensor(bias))
        return _UnitMaps(net).eval()

    def get_feature_names_out(self, input_features=None):
        """Get the names of the embedding's features.

        Parameters
        ----------
        input_features : None
            Ignored: the names do not depend on the input's.

        Returns
        -------
        names : ndarray of str objects, shape (n_components,)
            ``contrastiveembedder0``, ``contrastiveembedder1``, ...
        """
        check_is_fitted(self)
        return np.asarray([f"contrastiveembedder{i}"
                           for i in range(self.n_components)], dtype=object)

    def _check_defective(self, defective, shares, normal_shape):
        defective = np.asarray(defective, dtype=np.float32)
        if (defective.ndim != len(normal_shape)
                or defective.shape[1:] != normal_shape[1:]):
            raise ValueError(
                f"defective has shape {defective.shape}; expected (n_defective, "
                f"{', '.join(map(str, normal_shape[1:]))}) like X.")
        if defective.shape[0] == 0 or not np.all(np.isfinite(defective)):
            raise ValueError("defective must hold at least one sample, all finite.")
        if shares is None:
            shares = np.ones(defective.shape[:-1])
        shares = np.asarray(shares, dtype=np.float64)
        if shares.shape != defective.shape[:-1]:
            raise ValueError(f"defect_shares has shape {shares.shape}; expected "
                             f"{defective.shape[:-1]} (defective without its "
                             "feature axis).")
        if not np.all((shares >= 0) & (shares <= 1)):
            raise ValueError("defect_shares must lie in [0, 1].")
        return defective, shares

    def _split(self, normal, defective, shares, rng):
        """Training and validation rows as torch tensors; defective patch count."""
        n_val = int(self.validation_fraction * normal.shape[0])
        n_val_defective = int(self.validation_fraction * defective.shape[0])
        if min(n_val, n_val_defective) < 1:
            n_val = n_val_defective = 0
        normal_order = rng.permutation(normal.shape[0])
        defective_order = rng.permutation(defective.shape[0])
        d = normal.shape[-1]

        def rows(maps, index, share=None):
            selected = maps[index].reshape(-1, d)
            if share is not None:
                selected = selected[share[index].reshape(-1) >= self.min_share]
            return torch.from_numpy(np.ascontiguousarray(selected))

        train_defective = rows(defective, defective_order[n_val_defective:], shares)
        if train_defective.shape[0] == 0:
            raise ValueError(
                f"No training patch of the defective samples has a defect share of "
                f"at least min_share={self.min_share}; lower min_share or pass "
                "larger defects.")
        data = {"normal": rows(normal, normal_order[n_val:]),
                "defective": train_defective, "validation": None}
        if n_val:
            validation = {"normal": rows(normal, normal_order[:n_val]),
                          "defective": rows(defective,
                                            defective_order[:n_val_defective], shares)}
            if validation["defective"].shape[0]:
                data["validation"] = validation
        return data, int(train_defective.shape[0])

    def _show_progress(self):
        return show_progress(self.progress)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        tags.non_deterministic = False
        return tags


class _UnitMaps(torch.nn.Module):
    """An embedding net on feature maps (n, d, h, w), scaled to unit length."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, maps):
        z = self.net(maps.permute(0, 2, 3, 1))
        z = torch.nn.functional.normalize(z, dim=-1, eps=1e-12)
        return z.permute(0, 3, 1, 2)


def _feature_defects(maps, rng):
    """Defective copies made in feature space, and their shares (see Notes).

    ``maps`` is (n, h, w, d) or (n, d); each copy moves a blob of patches (or
    the whole row) by Gaussian noise scaled to each feature's spread.
    """
    std = maps.reshape(-1, maps.shape[-1]).std(axis=0) + 1e-6
    defective = maps.copy()
    if maps.ndim == 2:
        strength = rng.uniform(0.5, 2.0, (maps.shape[0], 1))
        defective += strength * std * rng.standard_normal(maps.shape)
        return defective.astype(np.float32), np.ones(maps.shape[0])
    if maps.ndim == 3:  # patch sets (n, p, d): a blob along the patch axis
        defective, shares = _feature_defects(maps[:, :, None], rng)
        return defective[:, :, 0], shares[:, :, 0]
    n, *grid = maps.shape[:-1]
    rows, columns = np.meshgrid(*(np.arange(size) for size in grid), indexing="ij")
    shares = np.zeros((n, *grid))
    for index in range(n):
        center = rng.uniform(0, 1, 2) * np.asarray(grid)
        radii = np.maximum(rng.uniform(0.05, 0.2, 2) * np.asarray(grid), 0.75)
        inside = ((rows - center[0]) / radii[0]) ** 2 + (
            (columns - center[1]) / radii[1]) ** 2 <= 1
        if not inside.any():
            inside[tuple(np.minimum(center.astype(int), np.asarray(grid) - 1))] = True
        noise = rng.standard_normal((int(inside.sum()), maps.shape[-1]))
        defective[index][inside] += rng.uniform(0.5, 2.0) * std * noise
        shares[index] = inside
    return defective.astype(np.float32), shares
