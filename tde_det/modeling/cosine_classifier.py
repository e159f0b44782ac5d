"""The De-confound-TDE classifier math (DESIGN.md §1-4), in plain torch.

Shapes: R regions, D feature channels, K heads (D % K == 0, Dk = D / K), C
foreground classes plus one background class stored LAST (index C, Detectron2's
convention). Per head k, ``x^k`` / ``w_i^k`` are the k-th Dk-chunk of a feature /
class weight.

    y_i      = (τ/K) Σ_k <w_i^k, x^k> / ((‖w_i^k‖+γ) ‖x^k‖)                (§1)
    b_i      = (τ/K) Σ_k cos(x^k, d̂^k) <w_i^k, d̂^k> / (‖w_i^k‖+γ)          (§3)
    TDE(y_i) = y_i − α b_i,   d̂^k = x̄^k / ‖x̄^k‖
    x̄       ← μ x̄ + (1−μ) mean_{foreground regions}(x)                     (§2)

Scores (§4): ``background_exempt_probs(y, y − α b)``.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MultiHeadCosineClassifier",
    "background_exempt_probs",
    "plain_probs",
    "tde_probs",
]

# Lower bound for feature / mean norms: a zero chunk then contributes 0 instead of 0/0.
_EPS = 1e-12


def _check_positive(name, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")


class MultiHeadCosineClassifier(nn.Module):
    """Multi-head normalised classifier with the moving-average feature x̄ (§1-3).

    Parameters / buffers:
        weight (Parameter [C+1, D]): class weights, background row last, no bias.
        mean_feature (buffer [D], float32, persistent): x̄, all zero until the first
            update; saved in and restored from checkpoints.
    """

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        *,
        num_heads: int = 2,
        scale: float = 16.0,
        gamma: float = 1.0 / 32.0,
        momentum: float = 0.9,
        sync_mean: bool = True,
    ):
        """
        Args:
            input_size: D, the feature dimension.
            num_outputs: C + 1 (foreground classes and background).
            num_heads: K; D must be divisible by K.
            scale: τ > 0.  gamma: γ > 0 (added to each per-head weight norm).
            momentum: μ in [0, 1) of the moving average x̄.
            sync_mean: all-reduce the foreground batch mean across processes before
                the update (when torch.distributed is initialised with > 1 process).
        """
        super().__init__()
        if not (isinstance(num_heads, int) and num_heads >= 1):
            raise ValueError(f"MODEL.TDE.NUM_HEADS must be an integer >= 1, got {num_heads!r}.")
        if input_size % num_heads != 0:
            raise ValueError(
                f"The box-head feature dimension D={input_size} is not divisible by "
                f"MODEL.TDE.NUM_HEADS={num_heads}; choose NUM_HEADS dividing D "
                f"(e.g. 1, 2 or 4 for D=1024) or change the box head's output size."
            )
        if num_outputs < 2:
            raise ValueError(f"Need at least one foreground class plus background, got {num_outputs} outputs.")
        _check_positive("MODEL.TDE.SCALE (tau)", scale)
        _check_positive("MODEL.TDE.GAMMA (gamma)", gamma)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ValueError(f"MODEL.TDE.MOMENTUM must be in [0, 1), got {momentum!r}.")
        self.num_heads = num_heads
        self.scale = float(scale)
        self.gamma = float(gamma)
        self.momentum = float(momentum)
        self.sync_mean = bool(sync_mean)

        # Same initialisation as the official causal-norm classifier.
        stdv = 1.0 / math.sqrt(input_size)
        self.weight = nn.Parameter(torch.empty(num_outputs, input_size).uniform_(-stdv, stdv))
        self.register_buffer("mean_feature", torch.zeros(input_size), persistent=True)

    def extra_repr(self):
        c1, d = self.weight.shape
        return (
            f"input_size={d}, num_outputs={c1}, num_heads={self.num_heads}, scale={self.scale}, "
            f"gamma={self.gamma}, momentum={self.momentum}, sync_mean={self.sync_mean}"
        )

    # ----------------------------------------------------------------- helpers
    def _split(self, t):
        """[..., D] -> [..., K, Dk] (a view)."""
        return t.view(*t.shape[:-1], self.num_heads, t.shape[-1] // self.num_heads)

    def _normalized_feature(self, x):
        """x^k / ‖x^k‖ per head, [R, D] in the weight's dtype (zero chunks stay zero)."""
        xs = self._split(x.to(self.weight.dtype))
        return (xs / xs.norm(dim=-1, keepdim=True).clamp_min(_EPS)).flatten(-2)

    def _normalized_weight(self):
        """w_i^k / (‖w_i^k‖ + γ) per head, [C+1, D]."""
        ws = self._split(self.weight)
        return (ws / (ws.norm(dim=-1, keepdim=True) + self.gamma)).flatten(-2)

    def _mean_direction_blocks(self):
        """Block-diagonal [D, K]: column k holds d̂^k = x̄^k / ‖x̄^k‖ in the rows of head k."""
        d = self._split(self.mean_feature.to(self.weight.dtype))  # [K, Dk]
        d = d / d.norm(dim=-1, keepdim=True).clamp_min(_EPS)
        eye = torch.eye(self.num_heads, dtype=d.dtype, device=d.device)
        return (d.unsqueeze(-1) * eye.unsqueeze(1)).flatten(0, 1)  # [K, Dk, K] -> [D, K]

    def _check_input(self, x):
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"Expected region features of shape [R, {self.weight.shape[1]}], got {tuple(x.shape)}."
            )

    # ----------------------------------------------------------------- logits
    def forward(self, x):
        """Plain cosine logits y (§1). x: [R, D] -> y: [R, C+1]."""
        return self.logits_and_counterfactual(x, counterfactual=False)[0]

    def counterfactual(self, x):
        """b: [R, C+1] with TDE(y) = y − α·b (§3). Zero while x̄ is zero."""
        return self.logits_and_counterfactual(x)[1]

    def logits_and_counterfactual(self, x, counterfactual=True):
        """(y, b), both [R, C+1], sharing the per-head normalisation of x and the weight.

        y = (τ/K) x̂ Ŵᵀ;  b = (τ/K) cos · P  with cos = x̂ Dblk [R, K] (cos(x^k, d̂^k)) and
        P = Dblkᵀ Ŵᵀ [K, C+1] (P_ki = <w_i^k, d̂^k> / (‖w_i^k‖+γ)). b is None when
        ``counterfactual`` is False.
        """
        self._check_input(x)
        xn = self._normalized_feature(x)
        wn = self._normalized_weight()
        factor = self.scale / self.num_heads
        y = factor * (xn @ wn.t())
        if not counterfactual:
            return y, None
        dblk = self._mean_direction_blocks()  # [D, K]
        cos = xn @ dblk  # [R, K]
        proj = dblk.t() @ wn.t()  # [K, C+1]
        return y, factor * (cos @ proj)

    def mean_cosine(self, x):
        """cos(x^k, d̂^k) per region and head, [R, K] (for α heuristics: α·mean cos ≈ 1)."""
        self._check_input(x)
        return self._normalized_feature(x) @ self._mean_direction_blocks()

    # ----------------------------------------------------------------- mean x̄
    @property
    def has_mean(self) -> bool:
        """False while x̄ is all zero (before the first foreground update)."""
        return bool(torch.any(self.mean_feature != 0))

    @torch.no_grad()
    def update_mean(self, fg_x):
        """x̄ ← μ x̄ + (1−μ) mean(fg_x) over the global batch (§2), in training mode only.

        fg_x: [N, D] features of the foreground regions of this process (N may be 0).
        With sync_mean and an initialised process group of > 1 processes, the sum and
        the count are all-reduced first, so every process must call this once per
        step (also with N = 0); a global batch without foreground is a no-op.
        """
        if not self.training:
            return
        self._check_input(fg_x)
        d = self.mean_feature.numel()
        stats = torch.empty(d + 1, dtype=self.mean_feature.dtype, device=self.mean_feature.device)
        stats[:d] = fg_x.detach().to(stats.dtype).sum(dim=0)
        stats[d] = fg_x.shape[0]
        if self.sync_mean and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
        count = stats[d]
        # No host sync: with count == 0 the update weight is 0 and x̄ stays unchanged.
        weight = (1.0 - self.momentum) * (count > 0).to(stats.dtype)
        batch_mean = stats[:d] / count.clamp_min(1.0)
        self.mean_feature.mul_(1.0 - weight).add_(weight * batch_mean)


# --------------------------------------------------------------------- scores
def _at_least_fp32(t):
    return t.to(torch.promote_types(t.dtype, torch.float32))


def plain_probs(y):
    """softmax(y) over C+1 classes. y: [R, C+1] -> [R, C+1]."""
    return F.softmax(_at_least_fp32(y), dim=-1)


def background_exempt_probs(y, y_tde):
    """Background-exempt scores (§4), background at index -1. [R, C+1] each -> [R, C+1].

        score_bg = p_bg,   score_i = (1 − p_bg) · q_i / (1 − q_bg)   (i fg)

    with p = softmax(y), q = softmax(y_tde). Computed stably as
    q_i / (1 − q_bg) = softmax(y_tde[:, :C])_i and 1 − p_bg = sigmoid(lse(y[:, :C]) − y_bg),
    so the foreground scores sum to 1 − p_bg even when p_bg or q_bg is close to 1.
    """
    y, y_tde = _at_least_fp32(y), _at_least_fp32(y_tde)
    fg_lse = torch.logsumexp(y[:, :-1], dim=1)
    bg_logit = y[:, -1]
    fg = torch.sigmoid(fg_lse - bg_logit).unsqueeze(1) * F.softmax(y_tde[:, :-1], dim=1)
    bg = torch.sigmoid(bg_logit - fg_lse).unsqueeze(1)
    return torch.cat([fg, bg], dim=1)


def tde_probs(y, b, alpha, background_exempt=True):
    """Test-time scores from the decomposition (y, b): [R, C+1] each -> [R, C+1].

    background_exempt=True: ``background_exempt_probs(y, y − α b)`` (§4).
    background_exempt=False: ``softmax(y − α b)`` (TDE logits, ordinary softmax, the
    paper's "w/o background exemption" ablation).
    α = 0 returns exactly ``plain_probs(y)`` (TDE(y) = y and §4 reduces to softmax).
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    if alpha == 0:
        return plain_probs(y)
    y_tde = y - alpha * b
    if background_exempt:
        return background_exempt_probs(y, y_tde)
    return plain_probs(y_tde)
