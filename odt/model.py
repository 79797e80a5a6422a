"""The Decision Transformer policy of ODT, in one file.

A GPT over interleaved (return-to-go, state, action) tokens. The output at each state
token parameterises the action taken at that step: a tanh-squashed Gaussian (ODT) or a
tanh-bounded deterministic action (the DT ablation).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from odt.config import ModelConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim)
        self.c_proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, last_query: bool = False) -> torch.Tensor:
        """`last_query`: only the newest token asks (inference); every token still answers."""
        B, T, C = x.shape
        if last_query:
            w, b = self.c_attn.weight, self.c_attn.bias
            q = F.linear(x[:, -1:], w[:C], b[:C])
            k, v = F.linear(x, w[C:], b[C:]).split(C, dim=2)
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)
        Tq = q.shape[1]
        hs = C // self.n_head
        q = q.view(B, Tq, self.n_head, hs).transpose(1, 2)
        k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (k, v))
        dropout_p = self.dropout if self.training else 0.0
        if last_query:  # the newest token sees every key: no causal mask, only the padding
            mask = None if attn_mask is None else attn_mask[..., -1:, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif attn_mask is None:  # no padding: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, Tq, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.embed_dim, 4 * cfg.embed_dim)
        self.act = nn.ReLU() if cfg.activation == "relu" else nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.embed_dim, cfg.embed_dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None, last_query: bool = False) -> torch.Tensor:
        """`last_query`: compute the output of the newest token only (the last block at inference)."""
        x = (x[:, -1:] if last_query else x) + self.attn(self.ln_1(x), attn_mask, last_query)
        return x + self.mlp(self.ln_2(x))


class DecisionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.embed_timestep = nn.Embedding(cfg.max_ep_len, d)
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_action = nn.Linear(cfg.act_dim, d)
        self.embed_ln = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.mean_head = nn.Linear(d, cfg.act_dim)
        self.log_std_head = nn.Linear(d, cfg.act_dim) if cfg.stochastic else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self,
        states: torch.Tensor,  # (B, K, state_dim), normalised
        actions: torch.Tensor,  # (B, K, act_dim)
        returns_to_go: torch.Tensor,  # (B, K), already multiplied by the reward scale
        timesteps: torch.Tensor,  # (B, K) long
        mask: torch.Tensor | None = None,  # (B, K), 1 on real tokens, 0 on left padding; None: no padding
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Action-distribution parameters read at each state token.

        Returns (mean, log_std) for the stochastic policy, where mean is pre-tanh, and
        (action, None) with action in (-1, 1) for the deterministic one. `last_only`
        reads only the newest step: what inference needs.
        """
        B, K, _ = states.shape
        h_s = self.embed_state(states)
        h_a = self.embed_action(actions)
        h_g = self.embed_return(returns_to_go.unsqueeze(-1).to(h_s.dtype))
        if self.cfg.use_positional_embedding:
            h_t = self.embed_timestep(timesteps)
            h_s, h_a, h_g = h_s + h_t, h_a + h_t, h_g + h_t
        # (g_1, s_1, a_1, g_2, s_2, a_2, ...): token 3t+1 is the state of step t
        x = torch.stack((h_g, h_s, h_a), dim=2).reshape(B, 3 * K, -1)
        if last_only:  # the newest action token comes after the state token we read: causally unseen
            x = x[:, :-1]
        T = x.shape[1]
        x = self.drop(self.embed_ln(x))

        attn_mask = None
        if mask is not None:  # the caller passes None when nothing is padded (no host sync here)
            keys = mask.bool().repeat_interleave(3, dim=1)[:, :T]  # (B, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attn_mask = causal & keys[:, None, None, :]
            # a padded query sees nothing else; let it see itself so softmax stays finite
            attn_mask = attn_mask | torch.eye(T, dtype=torch.bool, device=x.device)
        for i, block in enumerate(self.blocks):
            # at inference only the newest state token's output is read: the last block
            # computes that one token (about a quarter of a small model's forward saved)
            x = block(x, attn_mask, last_query=last_only and i == len(self.blocks) - 1)
        x = self.ln_f(x)

        h = x if last_only else x[:, 1::3]  # state tokens; last_only: x is the newest one already
        mean = self.mean_head(h)
        if self.log_std_head is None:
            return torch.tanh(mean), None
        # soft clamp keeps gradients alive at the bounds (unlike torch.clamp)
        lo, hi = self.cfg.log_std_min, self.cfg.log_std_max
        log_std = lo + 0.5 * (hi - lo) * (torch.tanh(self.log_std_head(h)) + 1.0)
        return mean, log_std
