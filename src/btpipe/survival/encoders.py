"""2-D slice encoders (MONAI, random init: no weights are downloaded) and their pretext pre-training.

Encoders (``build_encoder(name, in_channels, size)``), each giving one feature vector h_s per slice:

| name | MONAI network | features |
|---|---|---|
| ``resnet18`` | ``resnet18(spatial_dims=2)``, stem stride 2 (as the ImageNet ResNet18) | 512 |
| ``resnet_tiny`` | ``ResNet`` basic blocks [1,1,1,1], widths 16-128 (cheap CPU/test option) | 128 |
| ``vit`` | ``ViT(spatial_dims=2)`` small: hidden 192, 6 layers, 3 heads, patch size/8; mean of tokens | 192 |
| ``vit_b16`` | ViT-B/16 as in DAAL: hidden 768, 12 layers, 12 heads, patch 16 (224 px; needs a GPU) | 768 |
| ``efficientnet_b0`` | ``EfficientNetBN("efficientnet-b0", pretrained=False)``, classifier removed | 1280 |

MONAI's ViT needs the ``einops`` package.

Pre-training (``pretrain_encoder``): the papers start from ImageNet or another MRI data set; btpipe
downloads nothing, so each encoder is pre-trained inside the training fold on a pretext task
whose labels every bag carries without any outcome: classify the slice's plane (sagittal /
coronal / axial) and regress log(1 + tumour area) (standardised on the fold). Bags hold
tumour slices only (anchor +- neighbours), so tumour vs non-tumour classification would be
nearly degenerate; area regression teaches tumour extent and plane classification anatomy.
The subjects a pre-training saw are returned, so callers can prove no test subject was used.

``set_trainable(encoder, freeze)``: ``all`` (frozen feature extractor, as DAAL), ``all_but_last``
(only the last block trains, best in paper B), ``none`` (full fine-tuning).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError

ENCODERS = ("resnet18", "resnet_tiny", "vit", "vit_b16", "efficientnet_b0")


def _torch():
    import torch

    return torch


def resolve_device(device="auto"):
    """'auto' -> cuda when available else cpu; anything else is passed to torch.device."""
    torch = _torch()
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class SliceEncoder(_torch().nn.Module):
    """Wraps a MONAI backbone: forward(x [n, C, S, S]) -> h [n, out_dim]; ``last_block`` is
    the part that stays trainable with freeze='all_but_last'."""

    def __init__(self, name, backbone, out_dim, last_block, token_mean=False):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.out_dim = int(out_dim)
        self.last_block = last_block
        self.token_mean = token_mean

    def forward(self, x):
        out = self.backbone(x)
        if isinstance(out, tuple):  # MONAI ViT returns (tokens, hidden states)
            out = out[0]
        if self.token_mean:
            out = out.mean(dim=1)
        return out.reshape(out.shape[0], -1)


def _resnet(name, in_channels, options):
    from monai.networks.nets import ResNet, resnet18

    stride = options.get("stem_stride", 2)
    if name == "resnet18":
        net = resnet18(spatial_dims=2, n_input_channels=in_channels, feed_forward=False,
                       conv1_t_stride=stride)
        dim = 512
    else:
        widths = list(options.get("widths", (16, 32, 64, 128)))
        net = ResNet(block="basic", layers=[1, 1, 1, 1], block_inplanes=widths, spatial_dims=2,
                     n_input_channels=in_channels, conv1_t_stride=stride, feed_forward=False)
        dim = widths[-1]
    return SliceEncoder(name, net, dim, net.layer4)


def _vit(name, in_channels, size, options):
    torch = _torch()
    try:
        import einops  # noqa: F401  MONAI's attention blocks need it
    except ImportError as exc:
        raise ConfigError("the ViT encoder needs the 'einops' package (pip install einops)") from exc
    from monai.networks.nets import ViT

    if name == "vit_b16":
        cfg = {"patch_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12}
    else:
        cfg = {"patch_size": max(2, size // 8), "hidden_size": 192, "mlp_dim": 768, "num_layers": 6,
               "num_heads": 3}
    cfg.update({k: v for k, v in options.items() if k in cfg})
    if size % cfg["patch_size"]:
        raise ConfigError(f"ViT: slice size {size} is not a multiple of patch size {cfg['patch_size']}")
    net = ViT(in_channels=in_channels, img_size=size, spatial_dims=2, classification=False, **cfg)
    last = torch.nn.ModuleList([net.blocks[-1], net.norm])
    return SliceEncoder(name, net, cfg["hidden_size"], last, token_mean=True)


def _efficientnet(name, in_channels, options):
    torch = _torch()
    from monai.networks.nets import EfficientNetBN

    net = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=2, in_channels=in_channels,
                         num_classes=1)
    dim = net._fc.in_features
    net._fc = torch.nn.Identity()
    last = torch.nn.ModuleList([net._blocks[-1], net._conv_head, net._bn1])
    return SliceEncoder(name, net, dim, last)


def build_encoder(name: str, in_channels: int, size: int, **options) -> SliceEncoder:
    """A randomly initialised MONAI slice encoder (see the module table)."""
    if name in ("resnet18", "resnet_tiny"):
        return _resnet(name, in_channels, options)
    if name in ("vit", "vit_b16"):
        return _vit(name, in_channels, size, options)
    if name == "efficientnet_b0":
        return _efficientnet(name, in_channels, options)
    raise ConfigError(f"unknown slice encoder {name!r}; known: {list(ENCODERS)}")


def set_trainable(encoder: SliceEncoder, freeze: str) -> int:
    """Freeze 'all', 'all_but_last' or 'none' of the encoder; returns the trainable parameter count."""
    if freeze not in ("all", "all_but_last", "none"):
        raise ConfigError(f"freeze must be all, all_but_last or none, got {freeze!r}")
    for p in encoder.parameters():
        p.requires_grad = freeze == "none"
    if freeze == "all_but_last":
        for p in encoder.last_block.parameters():
            p.requires_grad = True
    return sum(p.numel() for p in encoder.parameters() if p.requires_grad)


def train_mode(encoder: SliceEncoder, freeze: str) -> None:
    """Train mode only where parameters train: frozen BatchNorm keeps its running statistics."""
    encoder.eval()
    if freeze == "none":
        encoder.train()
    elif freeze == "all_but_last":
        encoder.last_block.train()


def autocast(device, amp: bool):
    """Mixed precision on CUDA when ``amp``; a no-op context on CPU."""
    torch = _torch()
    import contextlib

    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def pretext_targets(bags) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [N, C, S, S], plane [N], standardised log(1 + tumour area) [N]) over all slices."""
    images = np.concatenate([b.images for b in bags])
    plane = np.concatenate([b.plane for b in bags]).astype(np.int64)
    area = np.log1p(np.concatenate([b.tumour_area for b in bags]))
    sd = area.std()
    area = (area - area.mean()) / (sd if sd > 0 else 1.0)
    return images, plane, area.astype(np.float32)


def pretrain_encoder(encoder: SliceEncoder, bags, epochs=2, lr=1e-3, batch_size=32, device="cpu",
                     amp=True, seed=0) -> dict:
    """Pretext pre-training (plane classification + log tumour-area regression) on ``bags``.

    Only the bags passed in are seen (callers pass the training fold's). Returns
    {"subjects": [...], "loss": [per epoch], "plane_accuracy": last epoch, "n_slices": N}.
    """
    torch = _torch()
    device = resolve_device(device)
    subjects = [b.subject for b in bags]
    if int(epochs) <= 0:
        return {"subjects": subjects, "loss": [], "plane_accuracy": None, "n_slices": 0}
    images, plane, area = pretext_targets(bags)
    gen = torch.Generator().manual_seed(int(seed))
    head = torch.nn.Linear(encoder.out_dim, 4).to(device)
    encoder.to(device)
    set_trainable(encoder, "none")
    encoder.train()
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(amp) and device.type == "cuda")
    x_all, p_all, a_all = (torch.from_numpy(images), torch.from_numpy(plane), torch.from_numpy(area))
    losses, correct = [], 0
    for _ in range(int(epochs)):
        perm = torch.randperm(len(plane), generator=gen)
        total, correct = 0.0, 0
        for start in range(0, len(plane), int(batch_size)):
            idx = perm[start:start + int(batch_size)]
            if idx.numel() < 2:  # BatchNorm needs two samples
                continue
            x, p, a = x_all[idx].to(device), p_all[idx].to(device), a_all[idx].to(device)
            opt.zero_grad()
            with autocast(device, amp):
                out = head(encoder(x)).float()
            loss = torch.nn.functional.cross_entropy(out[:, :3], p) + \
                torch.nn.functional.mse_loss(out[:, 3], a)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += float(loss.detach()) * idx.numel()
            correct += int((out[:, :3].argmax(1) == p).sum())
        losses.append(total / len(plane))
    encoder.eval()
    return {"subjects": subjects, "loss": losses, "plane_accuracy": correct / len(plane),
            "n_slices": int(len(plane))}


def encode_images(encoder: SliceEncoder, images: np.ndarray, device="cpu", amp=True,
                  batch_size=64) -> np.ndarray:
    """Features [n, out_dim] float32 of slices [n, C, S, S] (eval mode, no gradients)."""
    torch = _torch()
    device = resolve_device(device)
    encoder.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), int(batch_size)):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + int(batch_size)])).to(device)
            with autocast(device, amp):
                out.append(encoder(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.out_dim), np.float32)


def pretraining_key(encoder: SliceEncoder, bags, settings: dict) -> str:
    """Digest of everything a pre-training result depends on: the encoder's initial
    weights, the pretext data (images, planes, areas of every slice) and ``settings``
    (epochs, learning rate, batch size, seed, device type, precision)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    for array in pretext_targets(bags):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:32]


def pretrain_encoder_cached(encoder: SliceEncoder, bags, cache_dir=None, epochs=2, lr=1e-3,
                            batch_size=32, device="cpu", amp=True, seed=0) -> dict:
    """:func:`pretrain_encoder`, reusing an earlier identical run saved in ``cache_dir``.

    Every slice-bag model of a lab run pre-trains the same encoder on the same fold with
    the same seed; the first one saves the weights under a key of all the inputs
    (:func:`pretraining_key`) and the others load them instead of training again.
    Jobs running side by side wait on a lock file for the one that pre-trains. The
    returned dict adds ``cached`` (True when loaded). ``cache_dir=None`` always trains.
    """
    torch = _torch()
    from ..io import file_lock, torch_save

    def train() -> dict:
        # A forked, seeded RNG: the pretext head's initialisation depends only on the
        # seed (not on what the calling model drew before), and the caller's stream
        # does not move, so a model trains the same after a cache hit.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return pretrain_encoder(encoder, bags, epochs, lr, batch_size, device, amp, seed)

    if cache_dir is None or int(epochs) <= 0:
        return {**train(), "cached": False}
    device = resolve_device(device)
    settings = {"epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size),
                "seed": int(seed), "device": device.type, "amp": bool(amp)}
    path = Path(cache_dir) / f"{pretraining_key(encoder, bags, settings)}.pt"
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            saved = torch.load(path, map_location=device, weights_only=False)
            encoder.load_state_dict(saved["state"])
            encoder.to(device)
            encoder.eval()
            return {**saved["info"], "cached": True}
        info = train()
        torch_save(path, {"state": {k: v.cpu() for k, v in encoder.state_dict().items()},
                          "info": info})
    return {**info, "cached": False}
