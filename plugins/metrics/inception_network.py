"""pytorch-fid's FID InceptionV3, built from local weights, one network per extractor and device.

The network is the TF 2015-12-05 graph ported to PyTorch, with its patched pooling blocks,
assembled from ``pytorch_fid.inception``'s building blocks in the same way as
``pytorch_fid.inception.InceptionV3``, but with the state dict loaded from a local file
(:mod:`.inception_weights`): pytorch-fid's ``fid_inception_v3()`` downloads its weights, which
this module never does. Preprocessing is pytorch-fid's ``resize_input=True,
normalize_input=True``: bilinear resize to 299x299 (``align_corners=False``), then ``2x - 1``.
Features of blocks that are not 1x1 (``feature_dims`` < 2048) are average-pooled, as
``pytorch_fid.fid_score.get_activations`` does.
"""

from __future__ import annotations

import copy
import pickle

import torch
import torch.nn.functional as F
from torch import nn

from .inception_weights import WeightsSource

RESIZE = 299

# pytorch-fid's InceptionV3.BLOCK_INDEX_BY_DIM: feature dimensionality -> output block.
BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}
BLOCK_NAMES = {64: "first max pool", 192: "second max pool", 768: "pre-aux classifier", 2048: "pool3"}

PREPROCESSING = "v1: [0,1] float32, gray replicated to 3 channels, resize 299x299 bilinear align_corners=False, 2x-1"
"""Part of every on-disk cache key: change it whenever the network input or the network
construction changes (including the ``random:SEED`` init), so old rows are never reused."""


def _fid_inception(source: WeightsSource) -> nn.Module:
    """torchvision's Inception3 patched exactly as ``pytorch_fid.inception.fid_inception_v3``, minus the download."""
    from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, _inception_v3

    # fork_rng: the random init below and torchvision's default init must not move the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        if source.kind == "random":
            torch.manual_seed(int(source.seed or 0))
        inception = _inception_v3(num_classes=1008, aux_logits=False, weights=None)
        inception.Mixed_5b = FIDInceptionA(192, pool_features=32)
        inception.Mixed_5c = FIDInceptionA(256, pool_features=64)
        inception.Mixed_5d = FIDInceptionA(288, pool_features=64)
        inception.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        inception.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        inception.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        inception.Mixed_7b = FIDInceptionE_1(1280)
        inception.Mixed_7c = FIDInceptionE_2(2048)
        if source.kind == "random":
            # Kaiming-normal convolutions keep activations O(1) through ~90 ReLU layers (PyTorch's
            # default init shrinks them ~100-fold per block), so test features are well conditioned.
            for module in inception.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    if source.kind == "file":
        state = torch.load(source.path, map_location="cpu", weights_only=True)
        inception.load_state_dict(state)
    return inception


class InceptionFeatures(nn.Module):
    """pytorch-fid's ``InceptionV3(output_blocks=[block], resize_input=True, normalize_input=True)``.

    ``forward`` takes ``(N, 3, H, W)`` images in ``[0, 1]`` and returns ``(N, feature_dims)``
    float32 features (spatially averaged for blocks below pool3, as pytorch-fid does).
    """

    def __init__(self, inception: nn.Module, feature_dims: int = 2048) -> None:
        super().__init__()
        last = BLOCK_INDEX_BY_DIM[feature_dims]
        # The block split of pytorch_fid.inception.InceptionV3.__init__.
        blocks = [
            [inception.Conv2d_1a_3x3, inception.Conv2d_2a_3x3, inception.Conv2d_2b_3x3, nn.MaxPool2d(3, stride=2)],
            [inception.Conv2d_3b_1x1, inception.Conv2d_4a_3x3, nn.MaxPool2d(3, stride=2)],
            [inception.Mixed_5b, inception.Mixed_5c, inception.Mixed_5d, inception.Mixed_6a,
             inception.Mixed_6b, inception.Mixed_6c, inception.Mixed_6d, inception.Mixed_6e],
            [inception.Mixed_7a, inception.Mixed_7b, inception.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))],
        ]  # fmt: skip
        self.blocks = nn.Sequential(*(nn.Sequential(*b) for b in blocks[: last + 1]))
        self.feature_dims = feature_dims
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``(N, 3, H, W)`` images in ``[0, 1]``."""
        x = F.interpolate(x, size=(RESIZE, RESIZE), mode="bilinear", align_corners=False)
        x = self.blocks(2 * x - 1)
        if x.shape[2] != 1 or x.shape[3] != 1:
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1)


def source_key(source: WeightsSource, feature_dims: int) -> str:
    """A string identifying the extractor (weights identity and block), used in cache keys."""
    ident = f"random:{source.seed}" if source.kind == "random" else f"sha256:{source.sha256}"
    return f"{ident}/dims{feature_dims}"


_INCEPTIONS: dict[str, nn.Module] = {}
_NETWORKS: dict[tuple[str, str], InceptionFeatures] = {}


def network(source: WeightsSource, feature_dims: int, device: torch.device) -> InceptionFeatures:
    """The extractor for ``source`` on ``device``, built once per process."""
    key = (source_key(source, feature_dims), str(device))
    if key not in _NETWORKS:
        ident = source_key(source, 2048)
        if ident not in _INCEPTIONS:
            _INCEPTIONS[ident] = _fid_inception(source)
        net = InceptionFeatures(_INCEPTIONS[ident], feature_dims)
        # Module.to() moves in place; the CPU network shares its layers with the cached Inception.
        _NETWORKS[key] = net if device.type == "cpu" else copy.deepcopy(net).to(device)
    return _NETWORKS[key]


def load_error(source: WeightsSource, feature_dims: int) -> str | None:
    """Build the CPU network now; return why it failed (a reason for "unavailable"), or None."""
    try:
        network(source, feature_dims, torch.device("cpu"))
    except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:  # corrupt file
        return f"FID Inception weights {source.path} could not be loaded: {type(err).__name__}: {err}"
    return None
