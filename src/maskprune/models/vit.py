"""The token-aware ViT: timm's VisionTransformer with token selection and [CLS] attention taps.

`TokenViT` adds no parameters to timm's `VisionTransformer`, so any timm ViT/DeiT checkpoint
loads into it unchanged; a timm-built model becomes one by a `__class__` swap (as ToMe does).

Modifications over timm's forward:
  - `keep_idx` `[batch, kept]` gathers patch tokens after the positional embedding is added;
    prefix tokens ([CLS], registers) are always kept, so compute really shrinks.
  - `input_mask` replaces the masked patch embeddings by a mask token before the positional
    embedding is added (SimMIM's encoder input).
  - the head-averaged [CLS]->patch attention row of any block, computed in fp32 from q_cls and K
    (the block's own queries and keys), so the fused scaled-dot-product attention kernel stays
    in use.
  - per-block token features.
  - `forward_block`, the one per-block step that the token-pruning subclasses (EViT,
    DynamicViT, ToMe) override; `attention_residual` / `mlp_residual` split a timm `Block` at
    the point where those methods act, between attention and MLP.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from maskprune.errors import MaskpruneError

if TYPE_CHECKING:  # NOTE: config validates model names with this module, so no runtime import
    from maskprune.config import ModelSpec

PRESETS: dict[str, dict[str, object]] = {
    # NOTE: small ViTs for 28x28 inputs at patch 4 (49 patches) that train on two CPU cores.
    "vit_student": dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0),
    "vit_teacher": dict(embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0),
}
_TIMM_MODULES = ("vision_transformer", "deit")
Stats = tuple[list[float], list[float]]  # per-channel mean and std that input images are standardised with


@dataclass
class TokenViTOutput:
    """What `forward_tokens` returns; token-pruning subclasses fill the pruning fields too."""

    tokens: torch.Tensor  # [batch, prefix + t, channels]; after the final norm once returned
    embedded: torch.Tensor  # [batch, prefix + t, channels]: the blocks' input
    patch_idx: torch.Tensor  # [batch, t] input patch index of each non-prefix token (-1: a fused token)
    cls_attn: dict[int, torch.Tensor] = field(default_factory=dict)  # block -> [batch, t]
    block_tokens: list[torch.Tensor] = field(default_factory=list)  # per block [batch, prefix + t, c]
    kept_patches: dict[int, torch.Tensor] = field(default_factory=dict)  # pruning block -> patch_idx after it


@dataclass
class InputMask:
    """Patches to replace by a mask token before the positional embedding (SimMIM)."""

    masked: torch.Tensor  # [batch, patches] bool
    token: torch.Tensor  # [1, 1, channels]


def cls_attention(q: torch.Tensor, k: torch.Tensor, scale: float, num_prefix_tokens: int) -> torch.Tensor:
    """Head-averaged softmax row of the first token over the patch tokens, in fp32.

    Args:
        q, k: a block's queries and keys after their norms, `[batch, heads, tokens, head_dim]`.
        scale: the attention's logit scale (head_dim ** -0.5).
        num_prefix_tokens: tokens before the patches ([CLS], registers).
    Returns:
        `[batch, tokens - num_prefix_tokens]`; rows sum to at most 1 (prefix keys excluded).
    """
    with torch.autocast(q.device.type, enabled=False):
        logits = (q[:, :, :1].float() * scale) @ k.float().transpose(-2, -1)  # [batch, heads, 1, tokens]
        return logits.softmax(dim=-1).mean(dim=1)[:, 0, num_prefix_tokens:]


def gather_tokens(tokens: torch.Tensor, keep_idx: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Keep all prefix tokens and the patch tokens at `keep_idx` `[batch, kept]` (patch indices)."""
    prefix, patches = tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:]
    index = keep_idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    return torch.cat([prefix, patches.gather(1, index)], dim=1)


def attention_heads(attn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v `[batch, heads, t, head_dim]` of a timm `Attention` on `x` `[batch, t, channels]` (q/k normed)."""
    b, t, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return attn.q_norm(q), attn.k_norm(k), v


def attention_output(attn: torch.nn.Module, mixed: torch.Tensor) -> torch.Tensor:
    """A timm `Attention`'s output projection of the mixed values `[batch, heads, t, head_dim]`."""
    b, _, t, _ = mixed.shape
    return attn.proj_drop(attn.proj(attn.norm(mixed.transpose(1, 2).reshape(b, t, attn.attn_dim))))


def attention_residual(
    blk: torch.nn.Module, tokens: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first half of a timm `Block`: tokens + attention; also the queries and keys it used.

    The attention is timm's `Attention.forward` on its fused path (the same modules and
    `scaled_dot_product_attention`), written out so that q and k come back without a hook.
    Returns `[batch, t, channels]` and q, k `[batch, heads, t, head_dim]`; `attn_mask` is an
    additive bias broadcastable to `[batch, heads, t, t]`.
    """
    attn = blk.attn
    q, k, v = attention_heads(attn, blk.norm1(tokens))
    mixed = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
    )
    return tokens + blk.drop_path1(blk.ls1(attention_output(attn, mixed))), q, k


def mlp_residual(blk: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The second half of a timm `Block`: tokens + MLP."""
    return tokens + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(tokens))))


FLAT_POOL = "flat"


class TokenViT(VisionTransformer):
    """timm VisionTransformer whose forward can run on a subset of patch tokens."""

    output_type: ClassVar[type[TokenViTOutput]] = TokenViTOutput

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def embed(
        self, x: torch.Tensor, keep_idx: torch.Tensor | None = None, input_mask: InputMask | None = None
    ) -> torch.Tensor:
        """Images `[batch, chans, h, w]` -> tokens `[batch, prefix + kept, channels]`."""
        x = self.patch_embed(x)
        if input_mask is not None:
            x = torch.where(input_mask.masked.unsqueeze(-1), input_mask.token.to(x.dtype), x)
        x = self._pos_embed(x)
        x = self.patch_drop(x) if keep_idx is None else gather_tokens(x, keep_idx, self.num_prefix_tokens)
        return self.norm_pre(x)

    def forward_tokens(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        cls_attn_blocks: Iterable[int] = (),
        collect_block_tokens: bool = False,
        input_mask: InputMask | None = None,
    ) -> TokenViTOutput:
        """Run every block on the tokens `embed` keeps; `forward_block` is the per-block step."""
        wanted = {b % len(self.blocks) for b in cls_attn_blocks}
        tokens = self.embed(x, keep_idx, input_mask)
        if keep_idx is None:
            keep_idx = torch.arange(tokens.shape[1] - self.num_prefix_tokens, device=tokens.device)
            keep_idx = keep_idx.expand(tokens.shape[0], -1)
        out = self.output_type(tokens=tokens, embedded=tokens, patch_idx=keep_idx)
        for i, blk in enumerate(self.blocks):
            out.tokens = self.forward_block(i, blk, out, i in wanted)
            if collect_block_tokens:
                out.block_tokens.append(out.tokens)
        out.tokens = self.norm(out.tokens)
        return out

    def forward_block(self, index: int, blk: torch.nn.Module, out: TokenViTOutput, want_cls_attn: bool) -> torch.Tensor:
        """Block `index` on `out.tokens`; records its [CLS] row in `out.cls_attn` if wanted."""
        if not want_cls_attn:
            return blk(out.tokens)
        tokens, q, k = attention_residual(blk, out.tokens)
        out.cls_attn[index] = cls_attention(q, k, blk.attn.scale, self.num_prefix_tokens)
        return mlp_residual(blk, tokens)

    def forward_features(self, x: torch.Tensor, keep_idx: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_tokens(x, keep_idx).tokens

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """timm's pooling, and `flat`: every patch token side by side, `[batch, patches * channels]`.

        A linear head on `flat` features is a linear probe that keeps where each feature comes from;
        it needs every patch, so it serves unpruned, unoccluded inputs only.
        """
        if (self.global_pool if pool_type is None else pool_type) == FLAT_POOL:
            return x[:, self.num_prefix_tokens :].flatten(1)
        return super().pool(x, pool_type)

    def set_pool(self, pool: str, num_classes: int) -> None:
        """Pool the final tokens with `pool` (timm's `token`, `avg`, ... or `flat`) into a fresh head."""
        width = self.embed_dim * (self.num_patches if pool == FLAT_POOL else 1)
        self.global_pool = pool
        self.num_classes = num_classes
        self.head = torch.nn.Linear(width, num_classes)

    def forward(
        self,
        x: torch.Tensor,
        keep_idx: torch.Tensor | None = None,
        return_cls_attn: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits `[batch, classes]`; with `return_cls_attn` also the last block's [CLS] row.

        The attention row `[batch, kept]` (over the kept patches, in `keep_idx` order) comes out
        of `forward` itself, as in MaskedKD's student, so DDP and torch.compile wrappers see it.
        """
        if not return_cls_attn:
            return self.forward_head(self.forward_features(x, keep_idx))
        out = self.forward_tokens(x, keep_idx, cls_attn_blocks=(-1,))
        return self.forward_head(out.tokens), out.cls_attn[len(self.blocks) - 1]


@lru_cache(maxsize=1)
def timm_vit_names() -> frozenset[str]:
    """timm's plain ViT and DeiT architectures (the distilled DeiTs build another class, so not them)."""
    import timm

    return frozenset(
        name for module in _TIMM_MODULES for name in timm.list_models(module=module) if "distilled" not in name
    )


def check_model_name(name: str) -> None:
    """A ValueError naming the fix unless `name` is a preset or a timm ViT/DeiT name, with or
    without a pretrained tag (`vit_small_patch16_224.augreg_in21k`; its weights come from a local file)."""
    if name in PRESETS or name in timm_vit_names():
        return
    import timm
    from timm.models import split_model_name_tag

    base, tag = split_model_name_tag(name)
    if tag and base in timm_vit_names():
        tags = timm.list_pretrained(f"{base}.*")
        if name in tags:
            return
        raise ValueError(f"timm has no pretrained tag {tag!r} for {base!r}; use one of {', '.join(tags) or base}")
    if "distilled" in name:
        raise ValueError(
            f"{name!r} is a distilled DeiT, whose extra distillation token the token-aware ViT does not carry; "
            "use the plain DeiT of the same size"
        )
    close = difflib.get_close_matches(name, [*PRESETS, *timm_vit_names()], n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"unknown model name {name!r}; {hint}use a preset ({', '.join(PRESETS)}) "
        "or a timm ViT/DeiT name (timm.list_models('vit_*'))"
    )


@lru_cache
def model_depth(name: str) -> int:
    """The transformer blocks of the preset or timm ViT/DeiT `name`, counted without allocating weights."""
    if name in PRESETS:
        return int(PRESETS[name]["depth"])  # type: ignore[call-overload]
    import timm

    with torch.device("meta"):
        return len(timm.create_model(name, pretrained=False).blocks)


def build_model(spec: ModelSpec, num_classes: int, in_chans: int, weights: bool = True) -> TokenViT:
    """A TokenViT for `spec`: a preset, or a timm ViT/DeiT (weights from a local file only).

    Args:
        weights: load `spec.pretrained_file`, if any; False builds the architecture alone (for a
            checkpoint's own weights, so a saved model never needs the file it started from).
    """
    common = dict(
        img_size=spec.img_size,
        patch_size=spec.patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        drop_path_rate=spec.drop_path_rate,
    )
    if spec.name in PRESETS:
        if weights and spec.pretrained_file:
            raise MaskpruneError(
                f"model {spec.name!r} is a preset: pretrained_file applies to timm "
                "names only; init presets from a maskprune checkpoint instead"
            )
        return TokenViT(**common, **PRESETS[spec.name])
    import timm

    pretrained = weights and bool(spec.pretrained_file)
    if pretrained and not Path(spec.pretrained_file).is_file():
        raise MaskpruneError(
            f"models: pretrained_file {spec.pretrained_file!r} for {spec.name!r} does "
            "not exist; give a local .safetensors file (nothing is downloaded)"
        )
    try:
        # NOTE: timm keeps the file's classifier only if it has num_classes rows (e.g. weights already
        # fine-tuned on this data); it assumes the pretrained config's count (1000) unless told the file's
        overlay: dict[str, Any] = dict(file=spec.pretrained_file)
        if pretrained and (classes := pretrained_classes(spec.pretrained_file)):
            overlay["num_classes"] = classes
        model = timm.create_model(
            spec.name,
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay if pretrained else None,
            **common,
        )
    except (FileNotFoundError, RuntimeError) as err:
        raise MaskpruneError(
            f"cannot load timm weights for {spec.name!r} from "
            f"{spec.pretrained_file!r}: {(str(err) or type(err).__name__).splitlines()[0]}"
        ) from None
    if type(model) is not VisionTransformer:
        raise MaskpruneError(
            f"{spec.name!r} builds a {type(model).__name__}, not a plain timm "
            "VisionTransformer; choose a ViT or non-distilled DeiT"
        )
    model.__class__ = TokenViT
    return model


def pretrained_classes(path: str) -> int | None:
    """The classes of the classifier head (`head.weight` rows) in a timm weights file, if it has one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as weights:
            names = weights.keys()
            return weights.get_slice("head.weight").get_shape()[0] if "head.weight" in names else None
    except (SafetensorError, OSError) as err:
        raise MaskpruneError(f"{path}: not a readable safetensors file ({err}); give timm weights") from None


def input_stats(spec: ModelSpec, data_meta: dict[str, Any]) -> Stats:
    """The per-channel (mean, std) that `spec`'s input images are standardised with.

    With `normalize: auto` and a pretrained_file: the pretrained weights' own, from timm's
    pretrained config of the model name and its tag (ImageNet's for DeiT). For grey data each is
    the mean of the three RGB values: timm sums the RGB patch-embedding filters into one grey
    filter, which sees a grey image as an RGB one exactly when the three channels share their mean
    and std (ImageNet's std differ by 2%, its means by up to 0.08). Otherwise, or with
    `normalize: data`: the prepared data's, from its meta.json `data_meta`.
    """
    mean, std = list(data_meta["mean"]), list(data_meta["std"])
    if spec.normalize == "data" or not spec.pretrained_file:
        return mean, std
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(spec.name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        raise MaskpruneError(f"timm has no pretrained mean/std for {spec.name!r}; set normalize: data for this model")
    theirs = list(cfg.mean), list(cfg.std)
    if len(mean) == len(theirs[0]):
        return theirs
    if len(mean) == 1:
        return [sum(theirs[0]) / len(theirs[0])], [sum(theirs[1]) / len(theirs[1])]
    raise MaskpruneError(
        f"{spec.name!r} was pretrained on {len(theirs[0])}-channel images but the data has {len(mean)} "
        "channels; set normalize: data for this model"
    )


def eval_crop_pct(spec: ModelSpec, data_meta: dict[str, Any]) -> float | None:
    """The centre crop (fraction of the resized short side) that `spec` is evaluated with.

    The sharded storage's loader makes it: with `normalize: auto` and a pretrained_file, timm's
    pretrained config's crop_pct of the name and tag (0.9 for DeiT-S `.fb_in1k`); otherwise the
    prepared data's `eval_crop_pct`. None for the memory storage, which does not crop.
    """
    if data_meta.get("storage") != "shards":
        return None
    if spec.normalize == "auto" and spec.pretrained_file:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.name)
        if cfg is not None and cfg.crop_pct:
            return float(cfg.crop_pct)
    return float(data_meta["view"]["eval_crop_pct"])


@torch.no_grad()
def take_inputs_as(model: TokenViT, expected: Stats, given: Stats) -> TokenViT:
    """`model`, trained on images standardised with `expected`, changed in place to take `given` ones.

    Its patch embedding is a convolution with stride = kernel and no padding, so the change
    x_expected = x_given * a + b per channel (a = std_given / std_expected, b = (mean_given -
    mean_expected) / std_expected) folds exactly into its weights (times a) and bias (plus the
    weights applied to b); bilinear resizing commutes with it. For a frozen teacher fed the
    student's images.
    """
    if expected == given:
        return model
    proj = model.patch_embed.proj
    mean_e, std_e = (torch.tensor(v, dtype=torch.float64, device=proj.weight.device) for v in expected)
    mean_g, std_g = (torch.tensor(v, dtype=torch.float64, device=proj.weight.device) for v in given)
    weight = proj.weight.double()
    shift = ((weight * ((mean_g - mean_e) / std_e).view(1, -1, 1, 1)).sum(dim=(1, 2, 3))).to(proj.weight.dtype)
    if proj.bias is None:
        proj.bias = torch.nn.Parameter(torch.zeros_like(shift), requires_grad=proj.weight.requires_grad)
    proj.bias += shift
    proj.weight.copy_(weight * (std_g / std_e).view(1, -1, 1, 1))
    return model
