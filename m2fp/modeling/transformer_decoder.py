"""Masked-attention transformer decoder (Mask2Former predictor), post-norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2fp.modeling.position_encoding import PositionEmbeddingSine


class SelfAttentionLayer(nn.Module):
    def __init__(self, *, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos (Q, N, C) → (Q, N, C)."""
        q = k = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, k, value=tgt, need_weights=False)[0])

    def forward_batch_first(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        """The same layer on (N, Q, C) tensors, without `nn.MultiheadAttention`'s transposes."""
        q = tgt + query_pos
        return self.norm(tgt + _attention(self.self_attn, q, q, tgt, None))


class CrossAttentionLayer(nn.Module):
    def __init__(self, *, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, num_heads, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        attn_mask: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """tgt (Q,N,C), memory/pos (HW,N,C), attn_mask bool (N*heads,Q,HW) True=blocked."""
        out = self.multihead_attn(
            tgt + query_pos, memory + pos, value=memory, attn_mask=attn_mask, need_weights=False
        )[0]
        return self.norm(tgt + out)

    def forward_batch_first(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        attend: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """tgt, query_pos (N, Q, C); memory, pos (N, HW, C); attend bool (N, 1, Q, HW),
        True = may attend (one mask for every head, broadcast instead of repeated)."""
        out = _attention(self.multihead_attn, tgt + query_pos, memory + pos, memory, attend)
        return self.norm(tgt + out)


def _attention(
    mha: nn.MultiheadAttention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attend: torch.Tensor | None,
) -> torch.Tensor:
    """What `mha(query, key, value, attn_mask=~attend)` computes, on batch-first tensors
    (N, L, C), with the mask broadcast over heads: the same in-projections, scaled dot-product
    attention and out-projection, using `mha`'s own weights."""
    n, lq, c = query.shape
    heads = mha.num_heads
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    b_q, b_k, b_v = mha.in_proj_bias.chunk(3)

    def split(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # (N, L, C) -> (N, heads, L, C/heads)
        return F.linear(x, w, b).view(n, -1, heads, c // heads).transpose(1, 2)

    q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
    # (N, heads, Lq, C/heads) -> (N, Lq, C)
    return mha.out_proj(out.transpose(1, 2).reshape(n, lq, c))


class FFNLayer(nn.Module):
    def __init__(self, *, d_model: int, dim_feedforward: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt), inplace=True)))


class MLP(nn.Module):
    """Linear layers with ReLU between them (keys `layers.{i}`)."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MaskedAttentionDecoder(nn.Module):
    """Queries attend to one pixel-decoder level per layer (cycling coarse to fine), masked
    by the previous layer's mask prediction."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        num_heads: int,
        dim_feedforward: int,
        num_layers: int,
        mask_dim: int,
        enforce_input_project: bool,
        num_feature_levels: int = 3,
    ) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2, normalize=True)
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d_model=hidden_dim, num_heads=num_heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(d_model=hidden_dim, num_heads=num_heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d_model=hidden_dim, dim_feedforward=dim_feedforward) for _ in range(num_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.num_feature_levels = num_feature_levels
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(proj.weight, a=1)
                nn.init.constant_(proj.bias, 0)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(
            in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=mask_dim, num_layers=3
        )
        # set by m2fp.optimize: batch-first layers and attention masks computed at each
        # level's size (see `_forward_fast`); False keeps the reference computation
        self.fast = False

    def _heads(
        self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """output (Q,N,C) → class logits (N,Q,K+1), mask logits (N,Q,H,W) and the attention
        mask for the next layer, bool (N*heads, Q, h*w) at `target_size`, True = blocked."""
        decoded = self.decoder_norm(output).transpose(0, 1)  # (N, Q, C)
        class_logits = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        mask_logits = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn = F.interpolate(mask_logits, size=target_size, mode="bilinear", align_corners=False)
        # (N, Q, h*w) -> (N*heads, Q, h*w)
        attn = attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return class_logits, mask_logits, (attn < 0.5).detach()

    def forward(
        self, features: list[torch.Tensor], mask_features: torch.Tensor, *, aux: bool = True
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """
        Args:
            features: `num_feature_levels` maps (N, C, H_l, W_l), coarse first.
            mask_features: (N, mask_dim, H/4, W/4).
            aux: also return the earlier predictions. Only the fast path (`self.fast`) uses
                it: the reference path always returns them.

        Returns:
            class logits (N, Q, K+1) and mask logits (N, Q, H/4, W/4) of each prediction,
            num_layers + 1 of them (only the last one when fast and not `aux`), the last being
            the final output.
        """
        if self.fast:
            return self._forward_fast(features, mask_features, aux=aux)
        sizes, srcs, poss = [], [], []
        for i in range(self.num_feature_levels):
            x = features[i]
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            poss.append(self.pe_layer(x).flatten(2).permute(2, 0, 1))  # (HW, N, C)
            src = self.input_proj[i](x).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1))
        n = mask_features.shape[0]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, n, 1)  # (Q, N, C)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, n, 1)
        classes, masks = [], []
        cls, msk, attn_mask = self._heads(output, mask_features, sizes[0])
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            # a query that would see nothing sees everything instead
            attn_mask[attn_mask.all(-1)] = False
            output = self.transformer_cross_attention_layers[i](
                output, srcs[lvl], attn_mask, poss[lvl], query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            nxt = sizes[(i + 1) % self.num_feature_levels]
            cls, msk, attn_mask = self._heads(output, mask_features, nxt)
            classes.append(cls)
            masks.append(msk)
        return classes, masks

    def _forward_fast(
        self, features: list[torch.Tensor], mask_features: torch.Tensor, *, aux: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`forward` for inference. Differences from the reference, none of which changes
        the result beyond float rounding:
        - queries stay batch-first (N, Q, C) and the attention mask is (N, 1, Q, HW),
          broadcast over heads instead of repeated per head;
        - the attention masks of the layers come from `mask_features` resized once to each
          level's size: the bilinear resize is linear, so resize(mask_embed · mask_features)
          == mask_embed · resize(mask_features), and the full-resolution masks of the
          earlier layers (10 einsums + resizes at stride 4) are only computed when `aux`;
        - a fully blocked query row is unblocked with a mask operation, not boolean
          indexing (no host-device sync on CUDA).
        """
        n = mask_features.shape[0]
        srcs, poss, level_features = [], [], []
        for i in range(self.num_feature_levels):
            x = features[i]
            h, w = int(x.shape[-2]), int(x.shape[-1])
            # (N, C, H, W) -> (N, HW, C); a view when x is channels-last
            poss.append(self.pe_layer(x).permute(0, 2, 3, 1).reshape(n, h * w, -1))
            src = self.input_proj[i](x).permute(0, 2, 3, 1).reshape(n, h * w, -1)
            srcs.append(src + self.level_embed.weight[i])
            resized = F.interpolate(
                mask_features, size=(h, w), mode="bilinear", align_corners=False
            )
            level_features.append(resized.flatten(2))  # (N, mask_dim, HW)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(n, -1, -1)  # (N, Q, C)
        output = self.query_feat.weight.unsqueeze(0).expand(n, -1, -1)
        classes, masks = [], []
        for i in range(self.num_layers + 1):
            decoded = self.decoder_norm(output)
            mask_embed = self.mask_embed(decoded)
            if aux or i == self.num_layers:
                classes.append(self.class_embed(decoded))
                masks.append(torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features))
            if i == self.num_layers:
                break
            lvl = i % self.num_feature_levels
            # (N, Q, HW) mask logits at this level's size; blocked where sigmoid < 0.5
            blocked = torch.bmm(mask_embed, level_features[lvl]).sigmoid() < 0.5
            # a query that would see nothing sees everything instead
            attend = ~(blocked & ~blocked.all(-1, keepdim=True))
            output = self.transformer_cross_attention_layers[i].forward_batch_first(
                output, srcs[lvl], attend.unsqueeze(1), poss[lvl], query_pos
            )
            output = self.transformer_self_attention_layers[i].forward_batch_first(
                output, query_pos
            )
            output = self.transformer_ffn_layers[i](output)
        return classes, masks
