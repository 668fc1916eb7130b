"""GRAD, a grid-based continuous normal representation, as an outlier detector."""

import copy
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from crdistance._array_api import to_numpy
from crdistance._base import PatchOutlierMixin
from crdistance._progress import show_progress
from crdistance._sklearn_compat import Interval, StrOptions, fit_context
from crdistance._validation import validate_features

__all__ = ["GRADDetector"]

_NETWORK_PARAMS = ("local_grid_size", "global_grid_size", "hidden_channels",
                   "n_blocks")
_SCORE_BATCH_ELEMENTS = 1 << 23
"""Feature values scored in one forward pass (32 MiB of float32 input)."""


def _torch():
    """torch, or an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError("GRADDetector needs torch; install it with "
                          "pip install 'crdistance[vision]'.") from exc
    return torch


class GRADDetector(PatchOutlierMixin, BaseEstimator):
    """Anomaly detection by a grid-based continuous normal representation (GRAD).

    GRAD (Lee et al., 2024) learns, from normal feature maps, two grids of
    features: a **global grid** indexed by one coordinate per image, each point
    holding a whole feature map (so that one model serves many products, each
    sent to its own region of the grid), and a **local grid** indexed by one
    coordinate per patch (fine detail). Both coordinates are predicted from the
    input features; the two samples are fused by a small convolutional network
    into a reconstruction of the input, which **feature refinement** pulls back
    to the input where the two agree. A patch's anomaly distance is the norm
    of the refined reconstruction's error, in standardised feature units; an
    image scores its worst patch.

    Training runs in torch on cached patch features (of
    :class:`~crdistance.featurizer.PatchFeaturizer`), seeded, with early
    stopping on held-out training images; scoring needs torch too.

    Parameters
    ----------
    local_grid_size : int, default=8
        Side L of the local grid ``(C, L, L)``.
    global_grid_size : int, default=4
        Side G of the global grid ``(C*H*W, G, G)``: G^2 whole feature maps.
    hidden_channels : int, default=128
        Channels of the fusion network (the paper uses ``2C``).
    n_blocks : int, default=2
        Residual blocks (two 3x3 convolutions each) of the fusion network.
    jitter_std : float, default=0.05
        Standard deviation of the noise added to the local coordinates (in
        ``[-1, 1]`` grid units) on half of the training batches.
    mse_weight : float, default=0.3
        Weight of the agreement test ``mean squared error < refine_threshold``
        in the refinement.
    cosine_weight : float, default=0.7
        Weight of the cosine similarity of reconstruction and input in the
        refinement; ``mse_weight = cosine_weight = 0`` turns refinement off.
    refine_threshold : float, default=1.0
        Mean squared error per channel, in standardised units (the variance of
        each normal training feature is 1), below which a patch's
        reconstruction counts as agreeing with its input.
    learning_rate : float, default=1e-3
        Adam learning rate of the networks.
    grid_learning_rate : float, default=0.1
        Adam learning rate of the two grids (the paper's).
    batch_size : int, default=16
        Images per training step.
    max_epochs : int, default=20
        Passes over the training images at most.
    early_stopping : bool, default=True
        Stop when the validation loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs; the network of the best epoch is kept.
    validation_fraction : float in [0, 0.5), default=0.1
        Share of the training images held out for the validation loss (none
        when fewer than one image).
    n_iter_no_change : int, default=5
        Epochs without improvement before stopping.
    tol : float, default=0.0
        Least decrease of the monitored loss that counts as an improvement.
    contamination : "max" or float in (0, 0.5], default="max"
        How ``offset_`` is set from the distances of all fitting images:
        ``"max"`` at the largest one; a float puts that share beyond it.
    device : str, default="cpu"
        torch device of training and scoring (e.g. ``"cuda"``).
    random_state : int, RandomState instance or None, default=None
        Seeds the split, the initialisation, the batches and the jitter.
    progress : bool or "auto", default="auto"
        Show a progress bar over epochs; ``"auto"`` when stderr is a terminal.

    Attributes
    ----------
    mean_ : ndarray of shape (`n_features_in_`,)
        Mean of the training features, removed before the network.
    scale_ : ndarray of shape (`n_features_in_`,)
        Their standard deviation, divided out before the network.
    patch_shape_ : tuple of (int, int)
        The patch grid (H, W) of the training maps, which scored maps must
        have: (h, w) for 4-D input, (n_patches, 1) for 3-D, (1, 1) for rows.
    network_state_ : dict of str to ndarray
        The trained network's parameters and batch-norm buffers (float32).
    loss_curve_, validation_loss_curve_ : list of float
        Training and validation loss per epoch (the latter empty without
        validation).
    n_iter_ : int
        Epochs run.
    best_epoch_ : int
        Epoch of the kept network.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    n_features_in_ : int
        Number of features C.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names, when ``X`` had string column names.

    See Also
    --------
    crdistance.LocalCRDetector : Cells of CRD, the linear answer to many
        products in one model.
    crdistance.categories.PerCategoryDetector : One detector per product,
        with a router.

    Notes
    -----
    This implementation follows the authors' code (``tae-mo/CRAD``): tanh
    coordinate MLPs, bilinear grid sampling, jitter on half of the batches,
    refinement in training and scoring, mean-squared-error loss, Adam with a
    larger learning rate for the grids and gradient clipping at 0.1. For a
    2-core CPU it fuses the ``2C`` sampled channels down to
    ``hidden_channels`` before ``n_blocks`` residual blocks (the paper keeps
    ``2C`` channels through seven) and standardises the input features, so
    that ``refine_threshold`` is in units of their variance. The global grid
    holds ``G^2 C H W`` values: 1.6 M for 28 x 28 x 128 features.

    ``offset_`` comes from images the network was trained on, whose distances
    are lower than those of new normal images: calibrate the threshold on
    held-out normal images for use (``crdistance fit`` does).

    References
    ----------
    .. [1] J. C. Lee, T. Kim, E. Park, S. S. Woo, J. H. Ko. "Continuous
       Memory Representation for Anomaly Detection" (GRAD / CRAD), ECCV 2024,
       arXiv 2402.18293.

    Examples
    --------
    >>> import numpy as np
    >>> from crdistance.grad import GRADDetector
    >>> rng = np.random.default_rng(0)
    >>> normal = rng.normal(size=(64, 4, 4, 8)).astype(np.float32)
    >>> detector = GRADDetector(hidden_channels=16, max_epochs=3,
    ...                         random_state=0, progress=False).fit(normal)
    >>> detector.patch_shape_
    (4, 4)
    >>> detector.score_patches(normal[:2]).shape
    (2, 4, 4)
    >>> anomaly = normal[:1] + 0
    >>> anomaly[0, 1, 1] += 20.0
    >>> bool(detector.score_samples(anomaly)[0] < detector.score_samples(normal[:1])[0])
    True
    """

    _parameter_constraints: dict = {
        "local_grid_size": [Interval(Integral, 1, None, closed="left")],
        "global_grid_size": [Interval(Integral, 1, None, closed="left")],
        "hidden_channels": [Interval(Integral, 1, None, closed="left")],
        "n_blocks": [Interval(Integral, 0, None, closed="left")],
        "jitter_std": [Interval(Real, 0, None, closed="left")],
        "mse_weight": [Interval(Real, 0, None, closed="left")],
        "cosine_weight": [Interval(Real, 0, None, closed="left")],
        "refine_threshold": [Interval(Real, 0, None, closed="neither")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "grid_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 0.5, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "contamination": [StrOptions({"max"}), Interval(Real, 0, 0.5, closed="right")],
        "device": [str],
        "random_state": ["random_state"],
        "progress": ["boolean", StrOptions({"auto"})],
    }

    def __init__(self, *, local_grid_size=8, global_grid_size=4, hidden_channels=128,
                 n_blocks=2, jitter_std=0.05, mse_weight=0.3, cosine_weight=0.7,
                 refine_threshold=1.0, learning_rate=1e-3, grid_learning_rate=0.1,
                 batch_size=16, max_epochs=20, early_stopping=True,
                 validation_fraction=0.1, n_iter_no_change=5, tol=0.0,
                 contamination="max", device="cpu", random_state=None,
                 progress="auto"):
        self.local_grid_size = local_grid_size
        self.global_grid_size = global_grid_size
        self.hidden_channels = hidden_channels
        self.n_blocks = n_blocks
        self.jitter_std = jitter_std
        self.mse_weight = mse_weight
        self.cosine_weight = cosine_weight
        self.refine_threshold = refine_threshold
        self.learning_rate = learning_rate
        self.grid_learning_rate = grid_learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.contamination = contamination
        self.device = device
        self.random_state = random_state
        self.progress = progress

    @fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the grids and the network on normal feature maps.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width, n_features),
            (n_images, n_patches, n_features) or (n_samples, n_features)
            Normal training features; rows count as 1 x 1 maps.
        y : None
            Ignored, present for API consistency.

        Returns
        -------
        self : GRADDetector
            The fitted detector.
        """
        torch = _torch()
        from crdistance.grad._network import train_grad

        maps, shape = self._maps(*validate_features(self, X, reset=True), reset=True)
        if maps.shape[0] * shape[0] * shape[1] < 2:
            raise ValueError("Found only 1 sample (one patch); GRADDetector needs "
                             "at least 2 to train.")
        self.patch_shape_ = shape
        self.mean_ = maps.mean(axis=(0, 1, 2), dtype=np.float64)
        std = maps.std(axis=(0, 1, 2), dtype=np.float64)
        self.scale_ = np.where(std > 1e-12 * max(1.0, float(np.max(std))), std, 1.0)
        standardized = self._standardize(maps, torch)
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        order = rng.permutation(maps.shape[0])
        n_val = int(self.validation_fraction * maps.shape[0])
        train = standardized[np.sort(order[n_val:])]
        validation = standardized[np.sort(order[:n_val])] if n_val else None
        params = {**self.get_params(), "seed": seed}
        with torch.random.fork_rng(devices=[]):  # leaves the user's torch seed
            net, record = train_grad(train, validation, params,
                                     progress=self._show_progress())
        self.network_state_ = {name: value.detach().cpu().numpy().copy()
                               for name, value in net.state_dict().items()}
        self._net = (id(self.network_state_), net)
        self.loss_curve_ = record["loss"]
        self.validation_loss_curve_ = record["validation_loss"]
        self.n_iter_, self.best_epoch_ = record["n_iter"], record["best_epoch"]
        self._set_offset(self._distances_of(standardized).max(axis=(1, 2)),
                         self.contamination)
        return self

    def score_patches(self, X):
        """Anomaly distance of every patch (or row), with the input's shape.

        Parameters
        ----------
        X : array-like of shape (n_images, height, width, n_features),
            (n_images, n_patches, n_features) or (n_samples, n_features)
            Query features of the training patch grid.

        Returns
        -------
        distances : ndarray of shape X.shape[:-1]
            Non-negative distance per patch (larger = more anomalous), float64.
        """
        check_is_fitted(self)
        X_rows, patch_shape = validate_features(self, X, reset=False)
        maps, _ = self._maps(X_rows, patch_shape, reset=False)
        distances = self._distances_of(self._standardize(maps, _torch()))
        return distances.reshape(patch_shape or X_rows.shape[:1])

    def _sample_distances(self, X_rows, patch_shape):
        # score_samples / decision_function: the worst patch of each map.
        maps, _ = self._maps(X_rows, patch_shape, reset=False)
        return self._distances_of(self._standardize(maps, _torch())).max(axis=(1, 2))

    def _maps(self, X_rows, patch_shape, *, reset):
        """Validated rows as float32 maps (n, H, W, C) and their grid (H, W)."""
        rows = np.asarray(to_numpy(X_rows), dtype=np.float32)
        if patch_shape is None:
            shape, n_maps = (1, 1), rows.shape[0]
        else:
            shape, n_maps = (tuple(patch_shape[1:]) + (1,))[:2], patch_shape[0]
        if not reset:
            self._check_shape(shape)
        return rows.reshape(n_maps, *shape, -1), shape

    def _check_shape(self, shape):
        if tuple(shape) != tuple(self.patch_shape_):
            raise ValueError(
                f"X has patch grid {tuple(shape)}, but GRADDetector was fitted on "
                f"{tuple(self.patch_shape_)}: score features of the same image size "
                "and layers.")

    def _standardize(self, maps, torch):
        """Standardised maps as a float32 torch tensor (n, C, H, W)."""
        standardized = (maps - self.mean_.astype(np.float32)) / self.scale_.astype(
            np.float32)
        return torch.from_numpy(np.ascontiguousarray(
            standardized.transpose(0, 3, 1, 2), dtype=np.float32))

    def _distances_of(self, standardized):
        """Patch distances (n, H, W), float64, of standardised maps, in batches."""
        torch = _torch()
        from crdistance.grad._network import patch_distances

        net = self._network()
        params = self.get_params()
        per_map = int(np.prod(standardized.shape[1:]))
        step = max(1, _SCORE_BATCH_ELEMENTS // max(per_map, 1))
        out = []
        with torch.inference_mode():
            for start in range(0, standardized.shape[0], step):
                batch = standardized[start:start + step].to(self.device)
                out.append(patch_distances(net, batch, params).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def network_module(self):
        """The trained scorer as a torch module, for export and custom serving.

        Returns
        -------
        module : torch.nn.Module
            In eval mode, on ``device``: maps standardised feature maps
            ``(n, n_features, H, W)`` float32 (``(X - mean_) / scale_``, channels
            first) to patch distances ``(n, H, W)``, the numbers of
            :meth:`score_patches`. A new module on each call.
        """
        check_is_fitted(self)
        from crdistance.grad._network import DistanceModule

        net = copy.deepcopy(self._network())  # the cached one stays untouched
        module = DistanceModule(net, self.get_params()).eval()
        return module.to(self.device)

    def _network(self):
        """The trained network, rebuilt from ``network_state_`` when needed."""
        cached = getattr(self, "_net", None)
        if cached is not None and cached[0] == id(self.network_state_):
            return cached[1]
        torch = _torch()
        from crdistance.grad._network import GRADNet

        h, w = self.patch_shape_
        with torch.random.fork_rng(devices=[]):  # the initial values are replaced
            net = GRADNet(self.n_features_in_, h, w, **{
                name: getattr(self, name) for name in _NETWORK_PARAMS})
        net.load_state_dict({name: torch.as_tensor(np.asarray(value))
                             for name, value in self.network_state_.items()})
        net.to(self.device).eval()
        self._net = (id(self.network_state_), net)
        return net

    def _show_progress(self):
        return show_progress(self.progress)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_net", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = False
        tags.input_tags.three_d_array = True
        tags.non_deterministic = False
        return tags
