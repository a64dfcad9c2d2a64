"""The paper's architectures (Kumar & Poole 2020, Appendix D) and small MLP variants.

Conventions (shared with :mod:`gracheck.objectives`):

* encoders map ``x [B, C, H, W]`` (or ``[B, ...]`` for MLPs) to ``(mean [B, d], scale_tril)``
  where ``scale_tril [B, d, d]`` is the Cholesky factor of the amortised posterior
  q(z|x) = N(mean, LLᵀ) (β-VAE, Eq. 2) or ``None`` for the deterministic encoders of
  GRAE (Eq. 12/13), GRAE≈ (Eq. 14) and the plain autoencoder;
* decoders map ``z [B, d]`` to ``[B, C, H, W]`` (``[B, D]`` for MLPs), in (0, 1) after the
  final sigmoid (``out="none"`` returns the pre-sigmoid logits, for ``BernoulliObs(logits=True)``).

Appendix D lists every Conv/ConvT layer as (filters, kernel, stride) but no paddings. The
paddings chosen here, and the one departure needed to reach 64×64 on CelebA, are:

MNIST encoder (28×28×1 → FC_d): Conv64,4,1 p2 → 29; Conv128,4,2 p1 → 14; Conv256,4,2 p1 → 7;
Conv512,4,2 p1 → 3; Conv512,4,1 p1 → 2; Flatten (2·2·512 = 2048) → FC_d. Every layer is
followed by BatchNorm and ELU. With these paddings every input pixel lies under some kernel
window (a padding that drops a border row would make the encoder blind to it).

MNIST decoder (FC 7·7·256 → 28×28×1, no cropping): FC → BatchNorm1d over the 12,544 FC
outputs → ELU → reshape [256, 7, 7]; ConvT512,4,1 p1 → 8; ConvT256,4,1 p2 → 7;
ConvT128,4,2 p1 → 14; ConvT64,4,2 p1 output_padding 1 → 29; Conv1,4,1 p1 → 28; sigmoid.
(ConvT output = (n−1)s − 2p + k + output_padding; Conv output = ⌊(n + 2p − k)/s⌋ + 1.)

CelebA encoder (64×64×3 → FC_128): every Conv k5 with "same" padding p2:
64 → 64 → 32 → 16 → 8 → 4; Flatten (4·4·1024 = 16,384) → FC_d.

CelebA decoder: Appendix D prints FC 16×16×512 followed by ConvT1024,5,1, then *three*
stride-2 ConvTs (512, 256, 128) and Conv3,5,1, which gives 16·2³ = 128×128, not the 64×64
the paper trains on. We keep the printed FC size, channel counts and kernels and make the
ConvT512 stride 1 instead of 2 (p2, "same"): 16 → 16 → 16 → 32 → 64 → 64. This is exactly
the MNIST decoder's pattern (FC s×s, two stride-1 ConvTs, two stride-2 ConvTs, one stride-1
Conv: output 4s; 4·7 = 28, 4·16 = 64), so we read the printed stride 2 of ConvT512 as the
misprint. The alternatives (FC 8×8×512, or cropping/striding away half of a 128×128 output)
each change a printed size too and, for cropping, waste 3/4 of the last layers' work.
Stride-2 ConvTs use p2 output_padding 1 (exact doubling).

BatchNorm: training-mode BatchNorm couples the examples of a batch; the Jacobian engine
(:mod:`gracheck.autodiff`) treats batch statistics as constants for the tangent, so decoders
can be passed to the objectives as they are (as ``nn.Module``s, not closures).

``width`` scales every channel count (and the decoder's FC channels) by a factor, rounded,
at least 1; ``width=1.0`` is the paper's network. Parameter counts at width 1.0 (tests check
them against a layer-by-layer count): MNIST encoder d=12 deterministic 6,976,844
(+24,588 for the mean-field head), MNIST decoder d=12 5,041,601; CelebA encoder d=128
deterministic 45,533,312 (+2,097,280 mean-field head), CelebA decoder d=128 47,495,939.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from gracheck import posteriors
from gracheck.base.validate import check_positive_int

DATASETS = ("mnist", "celeba")
MODELS = ("beta-vae", "grae", "grae-approx", "ae")
ARCHS = ("conv", "mlp")
ACTIVATIONS = ("elu", "relu", "tanh", "softplus")
OUTPUTS = ("sigmoid", "none")
IMAGE_SHAPES = {"mnist": (1, 28, 28), "celeba": (3, 64, 64)}

__all__ = [
    "ARCHS",
    "DATASETS",
    "IMAGE_SHAPES",
    "MODELS",
    "CelebADecoder",
    "CelebAEncoder",
    "MLPDecoder",
    "MLPEncoder",
    "MNISTDecoder",
    "MNISTEncoder",
    "PosteriorHead",
    "VAEModel",
    "build_model",
    "count_parameters",
]


# ---------------------------------------------------------------------------------- helpers


def _check_width(width: object) -> float:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width: expected a finite number > 0, got {width!r}")
    return float(width)


def _ch(c: int, width: float) -> int:
    return max(1, int(round(c * width)))


def _activation(name: str) -> nn.Module:
    if name == "elu":
        return nn.ELU()
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    if name == "softplus":
        return nn.Softplus()
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {name!r}")


def _output(out: str) -> nn.Module:
    if out == "sigmoid":
        return nn.Sigmoid()
    if out == "none":
        return nn.Identity()
    raise ValueError(f"out: expected one of {OUTPUTS}, got {out!r}")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class PosteriorHead(nn.Module):
    """Encoder output layer(s): FC_d for the mean and, for β-VAE, the extra FC of Appendix D.

    ``posterior=None``: deterministic encoder (GRAE, GRAE≈, AE), returns ``(mean, None)``.
    ``"mean-field"``: d standard deviations; ``"block-diagonal"``: the Cholesky entries of each
    ``block``×``block`` diagonal block; ``"full"``: a dense Cholesky factor. The raw outputs go
    through :func:`gracheck.posteriors.scale_tril_from_params` (softplus on the diagonal).
    """

    def __init__(self, features: int, d: int, posterior: str | None = None, block: int | None = None) -> None:
        super().__init__()
        self.d = check_positive_int("d", d)
        check_positive_int("features", features)
        if posterior is not None and posterior not in posteriors.STRUCTURES:
            raise ValueError(f"posterior: expected None or one of {posteriors.STRUCTURES}, got {posterior!r}")
        if posterior == "block-diagonal":
            if block is None:
                raise ValueError("block: required for posterior='block-diagonal'")
            check_positive_int("block", block)
        elif block is not None and posterior != "block-diagonal":
            raise ValueError(f"block: only used with posterior='block-diagonal', got block={block!r} with {posterior!r}")
        self.posterior = posterior
        self.block = block
        self.mean = nn.Linear(features, d)
        self.scale = None
        if posterior is not None:
            self.scale = nn.Linear(features, posteriors.num_params(posterior, d, block))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor | None]:
        mean = self.mean(h)
        if self.scale is None:
            return mean, None
        return mean, posteriors.scale_tril_from_params(self.scale(h), self.d, self.posterior, self.block)


# ---------------------------------------------------------------------------------- conv nets


def _conv_stack(in_ch: int, layers: Sequence[tuple[int, int, int, int]], width: float) -> tuple[nn.Sequential, int]:
    mods: list[nn.Module] = []
    c = in_ch
    for filters, k, s, p in layers:
        out = _ch(filters, width)
        mods += [nn.Conv2d(c, out, k, s, p), nn.BatchNorm2d(out), nn.ELU()]
        c = out
    return nn.Sequential(*mods), c


class _ConvEncoder(nn.Module):
    def __init__(self, in_shape, layers, d, posterior, block, width):
        super().__init__()
        width = _check_width(width)
        self.in_shape = tuple(in_shape)
        self.features, c = _conv_stack(in_shape[0], layers, width)
        with torch.no_grad():
            n = self.features(torch.zeros(2, *in_shape)).flatten(1).shape[1]
        self.flat_features = n
        self.head = PosteriorHead(n, d, posterior, block)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"x: expected shape [B, {', '.join(map(str, self.in_shape))}], got {tuple(x.shape)}")
        return self.head(self.features(x).flatten(1))


class _ConvDecoder(nn.Module):
    def __init__(self, d, fc_shape, tlayers, final, out_channels, width, out):
        super().__init__()
        check_positive_int("d", d)
        width = _check_width(width)
        self.d = d
        c0, s0, _ = fc_shape
        c0 = _ch(c0, width)
        self.fc_shape = (c0, s0, s0)
        n = c0 * s0 * s0
        self.fc = nn.Sequential(nn.Linear(d, n), nn.BatchNorm1d(n), nn.ELU())
        mods: list[nn.Module] = []
        c = c0
        for i, (filters, k, s, p, op) in enumerate(tlayers):
            o = _ch(filters, width)
            mods.append(nn.ConvTranspose2d(c, o, k, s, p, output_padding=op))
            if i < len(tlayers) - 1:  # Appendix D: no BatchNorm after the last ConvT
                mods.append(nn.BatchNorm2d(o))
            mods.append(nn.ELU())
            c = o
        k, s, p = final
        mods += [nn.Conv2d(c, out_channels, k, s, p), _output(out)]
        self.body = nn.Sequential(*mods)
        self.out = out

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.d:
            raise ValueError(f"z: expected shape [B, {self.d}], got {tuple(z.shape)}")
        return self.body(self.fc(z).reshape(z.shape[0], *self.fc_shape))

    def jacobian_chain(self) -> tuple[nn.Module, ...]:
        """The layers :meth:`forward` composes, in order (the Jacobian engine's "chain" route)."""
        return (*self.fc, nn.Unflatten(1, self.fc_shape), *self.body)


# (filters, kernel, stride, padding); see the module docstring for the size arithmetic.
_MNIST_ENC = [(64, 4, 1, 2), (128, 4, 2, 1), (256, 4, 2, 1), (512, 4, 2, 1), (512, 4, 1, 1)]
# (filters, kernel, stride, padding, output_padding)
_MNIST_DEC = [(512, 4, 1, 1, 0), (256, 4, 1, 2, 0), (128, 4, 2, 1, 0), (64, 4, 2, 1, 1)]
_CELEBA_ENC = [(128, 5, 1, 2), (256, 5, 2, 2), (512, 5, 2, 2), (1024, 5, 2, 2), (1024, 5, 2, 2)]
_CELEBA_DEC = [(1024, 5, 1, 2, 0), (512, 5, 1, 2, 0), (256, 5, 2, 2, 1), (128, 5, 2, 2, 1)]


class MNISTEncoder(_ConvEncoder):
    """Appendix D MNIST encoder: 28×28×1 → 5 × (Conv → BN → ELU) → FC_d (+ posterior head)."""

    def __init__(self, d: int, posterior: str | None = None, block: int | None = None, *, width: float = 1.0):
        super().__init__((1, 28, 28), _MNIST_ENC, d, posterior, block, width)


class MNISTDecoder(_ConvDecoder):
    """Appendix D MNIST decoder: FC 7·7·256 → BN → ELU → 4 ConvT → Conv1,4,1 → sigmoid; ``[B, 1, 28, 28]``."""

    def __init__(self, d: int, *, width: float = 1.0, out: str = "sigmoid"):
        super().__init__(d, (256, 7, 7), _MNIST_DEC, (4, 1, 1), 1, width, out)


class CelebAEncoder(_ConvEncoder):
    """Appendix D CelebA encoder: 64×64×3 → 5 × (Conv k5 → BN → ELU) → FC_d (the paper's d = 128)."""

    def __init__(self, d: int = 128, posterior: str | None = None, block: int | None = None, *, width: float = 1.0):
        super().__init__((3, 64, 64), _CELEBA_ENC, d, posterior, block, width)


class CelebADecoder(_ConvDecoder):
    """Appendix D CelebA decoder (ConvT512 at stride 1, see the module docstring); ``[B, 3, 64, 64]``."""

    def __init__(self, d: int = 128, *, width: float = 1.0, out: str = "sigmoid"):
        super().__init__(d, (512, 16, 16), _CELEBA_DEC, (5, 1, 2), 3, width, out)


# Alternative spellings (benchmarks/bench_core.py imports MnistDecoder).
MnistEncoder = MNISTEncoder
MnistDecoder = MNISTDecoder


# ---------------------------------------------------------------------------------- MLPs


def _mlp(sizes: Sequence[int], activation: str) -> list[nn.Module]:
    mods: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        mods += [nn.Linear(a, b), _activation(activation)]
    return mods


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden, int):
        hidden = (hidden,)
    hidden = tuple(hidden)
    for i, h in enumerate(hidden):
        check_positive_int(f"hidden[{i}]", h)
    return hidden


class MLPEncoder(nn.Module):
    """Fully connected encoder: x ``[B, ...]`` (flattened to D) → hidden layers → posterior head."""

    def __init__(
        self,
        D: int,
        d: int,
        hidden: Sequence[int] = (256,),
        posterior: str | None = None,
        block: int | None = None,
        *,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        self.D = check_positive_int("D", D)
        hidden = _check_hidden(hidden)
        self.body = nn.Sequential(*_mlp((D, *hidden), activation))
        self.head = PosteriorHead(hidden[-1] if hidden else D, d, posterior, block)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        xf = x.reshape(x.shape[0], -1)
        if xf.shape[1] != self.D:
            raise ValueError(f"x: expected {self.D} values per example, got shape {tuple(x.shape)}")
        return self.head(self.body(xf))


class MLPDecoder(nn.Module):
    """Fully connected decoder z ``[B, d]`` → ``[B, D]`` (or ``[B, *out_shape]``).

    With ``activation="relu"`` and ``out="none"`` the decoder is piecewise linear in z, the
    case where the second-order expansion of Eq. 6 is exact almost everywhere.
    """

    def __init__(
        self,
        d: int,
        D: int,
        hidden: Sequence[int] = (256,),
        activation: str = "elu",
        out: str = "sigmoid",
        *,
        out_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.d = check_positive_int("d", d)
        self.D = check_positive_int("D", D)
        hidden = _check_hidden(hidden)
        if out_shape is not None:
            out_shape = tuple(int(s) for s in out_shape)
            if math.prod(out_shape) != D:
                raise ValueError(f"out_shape: {out_shape} has {math.prod(out_shape)} values, D = {D}")
        self.out_shape = out_shape
        self.body = nn.Sequential(*_mlp((d, *hidden), activation), nn.Linear(hidden[-1] if hidden else d, D), _output(out))
        self.out = out

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.d:
            raise ValueError(f"z: expected shape [B, {self.d}], got {tuple(z.shape)}")
        g = self.body(z)
        return g if self.out_shape is None else g.reshape(z.shape[0], *self.out_shape)

    def jacobian_chain(self) -> tuple[nn.Module, ...]:
        """The layers :meth:`forward` composes, in order (the Jacobian engine's "chain" route)."""
        return (*self.body, *([] if self.out_shape is None else [nn.Unflatten(1, self.out_shape)]))


# ---------------------------------------------------------------------------------- model


class VAEModel(nn.Module):
    """An encoder/decoder pair; ``spec`` records how :func:`build_model` made it (for checkpoints)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, spec: dict | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.spec = dict(spec or {})

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(mean [B, d], scale_tril [B, d, d] or None)``."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction at the posterior mean, g(h(x))."""
        return self.decoder(self.encoder(x)[0])


def build_model(
    dataset: str,
    model: str,
    latent_dim: int,
    *,
    posterior: str = "mean-field",
    block: int | None = None,
    width: float = 1.0,
    arch: str = "conv",
    hidden: Sequence[int] = (256,),
    activation: str = "elu",
    out: str = "sigmoid",
) -> VAEModel:
    """The network for ``dataset`` ∈ {"mnist", "celeba"} and ``model`` ∈ {"beta-vae", "grae", "grae-approx", "ae"}.

    ``arch="conv"`` is Appendix D (``width`` scales channels); ``arch="mlp"`` uses
    :class:`MLPEncoder`/:class:`MLPDecoder` with ``hidden`` sizes (decoder mirrored) and
    ``activation``. Only β-VAE gets the posterior head (``posterior``, ``block``); the other
    models have deterministic encoders. ``out="none"`` drops the final sigmoid (logits).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
    if model not in MODELS:
        raise ValueError(f"model: expected one of {MODELS}, got {model!r}")
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    check_positive_int("latent_dim", latent_dim)
    _output(out)
    post = posterior if model == "beta-vae" else None
    blk = block if post == "block-diagonal" else None
    if model == "beta-vae" and posterior == "block-diagonal" and block is None:
        raise ValueError("block: required for posterior='block-diagonal'")
    spec = dict(
        dataset=dataset, model=model, latent_dim=latent_dim, posterior=post, block=blk, width=float(width),
        arch=arch, hidden=list(_check_hidden(hidden)), activation=activation, out=out,
    )
    if arch == "conv":
        if activation != "elu":
            raise ValueError(f"activation: the Appendix D conv nets use ELU, got {activation!r}")
        if dataset == "mnist":
            enc = MNISTEncoder(latent_dim, post, blk, width=width)
            dec = MNISTDecoder(latent_dim, width=width, out=out)
        else:
            enc = CelebAEncoder(latent_dim, post, blk, width=width)
            dec = CelebADecoder(latent_dim, width=width, out=out)
    else:
        shape = IMAGE_SHAPES[dataset]
        D = math.prod(shape)
        h = _check_hidden(hidden)
        enc = MLPEncoder(D, latent_dim, h, post, blk, activation=activation)
        dec = MLPDecoder(latent_dim, D, tuple(reversed(h)), activation, out, out_shape=shape)
    return VAEModel(enc, dec, spec)


def build_from_spec(spec: dict) -> VAEModel:
    """Rebuild a model from :attr:`VAEModel.spec` (as stored in checkpoints)."""
    s = dict(spec)
    return build_model(
        s.pop("dataset"), s.pop("model"), s.pop("latent_dim"),
        posterior=s.pop("posterior") or "mean-field", block=s.pop("block"), width=s.pop("width"),
        arch=s.pop("arch"), hidden=tuple(s.pop("hidden")), activation=s.pop("activation"), out=s.pop("out"),
    )
