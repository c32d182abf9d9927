"""Networks (MONAI SegResNet / DynUNet) and loading of saved weights.

Internal conventions, whatever the source of the weights: input channels in
``btpipe.SEQUENCES`` order (t1, t1ce, t2, flair), output channels are region
logits in ``labels.REGIONS`` order (WT, TC, ET), sigmoid per channel.

`load_model` reads a btpipe ``model.pt`` (a dict with "state_dict" and
metadata) or a raw MONAI-bundle SegResNet state dict (e.g. the Model Zoo
``brats_mri_segmentation`` bundle's ``models/model.pt``: inputs T1c, T1, T2,
FLAIR; outputs TC, WT, ET). Different channel or region orders are handled by
permuting the weights of the first convolution (input channels) and of the
final 1x1x1 convolution (output channels), so the returned module speaks the
internal order and can be saved again as a btpipe checkpoint.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import SEQUENCES
from ..errors import ConfigError, InputError
from ..labels import REGIONS

SEGRESNET_DEFAULTS = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1]}
# The public MONAI Model Zoo brats_mri_segmentation bundle.
BUNDLE_CHANNEL_ORDER = ["t1ce", "t1", "t2", "flair"]
BUNDLE_REGION_ORDER = ["TC", "WT", "ET"]
BUNDLE_ROI = [240, 240, 160]


def _dynunet_topology(roi_size, max_levels=6):
    """nnU-Net-style kernels/strides: halve every axis down to >= 4 voxels."""
    size = list(roi_size)
    strides, kernels = [[1, 1, 1]], [[3, 3, 3]]
    while len(strides) < max_levels:
        stride = [2 if s >= 8 and s % 2 == 0 else 1 for s in size]
        if all(s == 1 for s in stride):
            break
        size = [s // st for s, st in zip(size, stride)]
        strides.append(stride)
        kernels.append([3, 3, 3])
    return kernels, strides


def build_network(network="segresnet", in_channels=4, out_channels=3, init_filters=16,
                  roi_size=(128, 128, 128), **options) -> torch.nn.Module:
    """Build a fresh network. options: blocks_down/blocks_up/dropout_prob (SegResNet)."""
    from monai.networks.nets import DynUNet, SegResNet

    if network == "segresnet":
        return SegResNet(
            spatial_dims=3, in_channels=int(in_channels), out_channels=int(out_channels),
            init_filters=int(init_filters),
            blocks_down=list(options.get("blocks_down", SEGRESNET_DEFAULTS["blocks_down"])),
            blocks_up=list(options.get("blocks_up", SEGRESNET_DEFAULTS["blocks_up"])),
            dropout_prob=options.get("dropout_prob"))
    if network == "dynunet":
        kernels, strides = _dynunet_topology(roi_size)
        filters = [min(int(init_filters) * 2 ** i, 320) for i in range(len(strides))]
        return DynUNet(spatial_dims=3, in_channels=int(in_channels), out_channels=int(out_channels),
                       kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                       filters=filters, norm_name="instance", deep_supervision=False, res_block=True)
    raise ConfigError(f"segmentation.network: unknown network {network!r} (segresnet | dynunet)")


def network_params(network, init_filters, roi_size, **options) -> dict:
    """The keyword arguments that rebuild the same architecture (stored in model.pt)."""
    params = {"init_filters": int(init_filters), "roi_size": [int(r) for r in roi_size]}
    if network == "segresnet":
        params["blocks_down"] = list(options.get("blocks_down", SEGRESNET_DEFAULTS["blocks_down"]))
        params["blocks_up"] = list(options.get("blocks_up", SEGRESNET_DEFAULTS["blocks_up"]))
    return params


@dataclass
class LoadedModel:
    """A network in internal channel/region order plus what inference needs."""

    module: torch.nn.Module
    roi_size: list
    network: str
    normalize: bool = True
    meta: dict = field(default_factory=dict)


def _segresnet_shape_from_state(state: dict) -> dict:
    """Infer SegResNet hyper-parameters from a state dict's keys and shapes."""
    if "convInit.conv.weight" not in state:
        raise KeyError("convInit.conv.weight")
    w0 = state["convInit.conv.weight"]
    final = [k for k in state if re.fullmatch(r"conv_final\.\d+\.conv\.weight", k)]
    if not final:
        raise KeyError("conv_final.*.conv.weight")
    blocks_down, blocks_up = {}, {}
    for key in state:
        m = re.match(r"down_layers\.(\d+)\.(\d+)\.conv1", key)
        if m:
            level, idx = int(m.group(1)), int(m.group(2))
            blocks_down[level] = max(blocks_down.get(level, 0), idx)
        m = re.match(r"up_layers\.(\d+)\.(\d+)\.conv1", key)
        if m:
            level, idx = int(m.group(1)), int(m.group(2))
            blocks_up[level] = max(blocks_up.get(level, 0), idx + 1)
    return {
        "in_channels": int(w0.shape[1]),
        "init_filters": int(w0.shape[0]),
        "out_channels": int(state[final[0]].shape[0]),
        "final_key": final[0][: -len(".weight")],
        "blocks_down": [blocks_down[i] for i in sorted(blocks_down)],
        "blocks_up": [blocks_up[i] for i in sorted(blocks_up)],
    }


def _permutation(source_order, target_order, what):
    source_order = [str(s) for s in source_order]
    if sorted(source_order) != sorted(target_order):
        raise ConfigError(f"{what} must be a permutation of {list(target_order)}, got {source_order}")
    return [source_order.index(name) for name in target_order]


def reorder_state_dict(state: dict, channel_order, region_order, first_key, final_key) -> dict:
    """Permute first-conv input channels (unless ``channel_order`` is None) and
    final-conv outputs to internal order."""
    state = dict(state)
    out_perm = _permutation(region_order, REGIONS, "region_order")
    if channel_order is not None:
        in_perm = _permutation(channel_order, SEQUENCES, "channel_order")
        state[first_key + ".weight"] = state[first_key + ".weight"][:, in_perm].clone()
    state[final_key + ".weight"] = state[final_key + ".weight"][out_perm].clone()
    if final_key + ".bias" in state:
        state[final_key + ".bias"] = state[final_key + ".bias"][out_perm].clone()
    return state


def _torch_load(path):
    path = Path(path)
    if not path.exists():
        raise InputError("model file not found", path=path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"cannot read model file: {exc}", path=path) from exc


def _first_and_final_keys(network, module):
    if network == "segresnet":
        return "convInit.conv", None
    # DynUNet: input_block.conv1.conv, output_block.conv.conv
    return "input_block.conv1.conv", "output_block.conv.conv"


def load_model(path, params=None) -> LoadedModel:
    """Load a btpipe model.pt or a raw MONAI-bundle SegResNet state dict.

    params (optional dict): for raw state dicts, ``channel_order`` (default
    the bundle's t1ce, t1, t2, flair), ``region_order`` (default TC, WT, ET)
    and ``normalize`` (default true: channel-wise z-score over non-zero voxels,
    as the bundle was trained). Returns a LoadedModel in eval mode on CPU,
    inputs t1, t1ce, t2, flair and outputs WT, TC, ET.
    """
    params = dict(params or {})
    obj = _torch_load(path)
    if isinstance(obj, dict) and "state_dict" in obj and "network" in obj:
        return _load_btpipe(obj, path)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _load_bundle_state(obj, path, params)
    raise InputError("neither a btpipe model.pt nor a SegResNet state dict", path=path)


def _load_btpipe(obj, path) -> LoadedModel:
    network = obj["network"]
    net_params = dict(obj.get("network_params", {}))
    roi = net_params.pop("roi_size", obj.get("roi_size"))
    module = build_network(network, in_channels=obj["in_channels"], out_channels=len(obj["region_order"]),
                           roi_size=roi, **net_params)
    state = obj["state_dict"]
    channel_order = list(obj.get("channel_order", SEQUENCES))
    region_order = list(obj.get("region_order", REGIONS))
    # Channels other than the four sequences (e.g. a 2-channel FLAIR + T1c model
    # saved as ch0, ch1) take their inputs in the trained order: nothing to permute.
    if sorted(channel_order) != sorted(SEQUENCES) or channel_order == list(SEQUENCES):
        channel_order = None
    if channel_order is not None or region_order != list(REGIONS):
        first, final = _first_and_final_keys(network, module)
        if final is None:
            final = _segresnet_shape_from_state(state)["final_key"]
        state = reorder_state_dict(state, channel_order, region_order, first, final)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"checkpoint does not fit its declared network: {exc}", path=path) from exc
    module.eval()
    meta = {k: v for k, v in obj.items() if k != "state_dict"}
    meta["source"] = "btpipe"
    return LoadedModel(module, list(obj.get("roi_size", roi)), network,
                       bool(obj.get("normalize", True)), meta)


def _load_bundle_state(state, path, params) -> LoadedModel:
    if any(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        shape = _segresnet_shape_from_state(state)
    except KeyError as exc:
        raise InputError(f"state dict lacks SegResNet key {exc}", path=path) from exc
    channel_order = list(params.get("channel_order") or BUNDLE_CHANNEL_ORDER)
    region_order = list(params.get("region_order") or BUNDLE_REGION_ORDER)
    if shape["in_channels"] != len(channel_order) or shape["out_channels"] != len(region_order):
        raise InputError(
            f"state dict has {shape['in_channels']} inputs / {shape['out_channels']} outputs; "
            f"expected {len(channel_order)} ({channel_order}) / {len(region_order)} ({region_order})",
            path=path)
    state = reorder_state_dict(state, channel_order, region_order, "convInit.conv", shape["final_key"])
    module = build_network("segresnet", in_channels=shape["in_channels"], out_channels=shape["out_channels"],
                           init_filters=shape["init_filters"], blocks_down=shape["blocks_down"],
                           blocks_up=shape["blocks_up"])
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"state dict does not fit a SegResNet: {exc}", path=path) from exc
    module.eval()
    roi = list(BUNDLE_ROI)
    meta = {"source": "monai-bundle", "channel_order_in_file": channel_order,
            "region_order_in_file": region_order, "init_filters": shape["init_filters"],
            "blocks_down": shape["blocks_down"], "blocks_up": shape["blocks_up"]}
    return LoadedModel(module, roi, "segresnet", bool(params.get("normalize", True)), meta)


def pick_device(name: str) -> torch.device:
    """The torch device for ``segmentation.device``: auto = the GPU when there is one."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("segmentation.device is cuda but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)

