"""The De-confound-TDE classifier math (DESIGN.md §1-4), in plain torch.

Shapes: R regions, D feature channels, K heads (D % K == 0, Dk = D / K), C
foreground classes plus one background class stored LAST (index C, Detectron2's
convention). Per head k, ``x^k`` / ``w_i^k`` are the k-th Dk-chunk of a feature /
class weight.

    y_i      = (τ/K) Σ_k <w_i^k, x^k> / ((‖w_i^k‖+γ) ‖x^k‖)                (§1)
    b_i      = (τ/K) Σ_k cos(x^k, d̂^k) <w_i^k, d̂^k> / (‖w_i^k‖+γ)          (§3)
    TDE(y_i) = y_i − α b_i,   d̂^k = x̄^k / ‖x̄^k‖
    x̄       ← μ x̄ + (1−μ) mean_{foreground regions}(x)                     (§2)

Scores (§4): ``background_exempt_probs(y, y − α b)`` = ``softmax(exempt_logits(y, y − α b))``.
Test-time logits (what the box predictor returns in eval mode): ``tde_logits(y, b, α, exempt)``.

Everything the box predictor's forward calls is TorchScript-scriptable and traceable (no Python
branch on tensor values): with x̄ = 0, d̂ = 0 and b = 0 exactly, so the TDE scores reduce to
softmax(y) by arithmetic alone.
"""

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError  # a ValueError: the tools print it as one "error:" line

__all__ = [
    "MultiHeadCosineClassifier",
    "background_exempt_probs",
    "exempt_logits",
    "plain_probs",
    "tde_logits",
    "tde_probs",
]

# Lower bound for feature / mean norms: a zero chunk then contributes 0 instead of 0/0.
_EPS = 1e-12


def _check_positive(arg, key, value):
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{arg}={value!r} ({key}) must be a finite number > 0.")


class MultiHeadCosineClassifier(nn.Module):
    """Multi-head normalised classifier with the moving-average feature x̄ (§1-3).

    ``forward`` and ``logits_and_counterfactual`` are scriptable and traceable; x̄ is read as a
    tensor (a traced or scripted module applies the x̄ loaded into it later).

    Parameters / buffers:
        weight (Parameter [C+1, D]): class weights, background row last, no bias.
        mean_feature (buffer [D], float32, persistent): x̄, all zero until the first
            update; saved in and restored from checkpoints.
    """

    __jit_unused_properties__ = ["has_mean"]

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
            raise ConfigError(f"num_heads={num_heads!r} (MODEL.TDE.NUM_HEADS) must be an integer >= 1.")
        if input_size % num_heads != 0:
            raise ConfigError(
                f"The box-head feature dimension D={input_size} is not divisible by "
                f"num_heads={num_heads} (MODEL.TDE.NUM_HEADS); choose a number of heads dividing D "
                f"(e.g. 1, 2 or 4 for D=1024) or change the box head's output size."
            )
        if num_outputs < 2:
            raise ConfigError(f"Need at least one foreground class plus background, got {num_outputs} outputs.")
        _check_positive("scale", "MODEL.TDE.SCALE, tau", scale)
        _check_positive("gamma", "MODEL.TDE.GAMMA", gamma)
        if not (isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0):
            raise ConfigError(f"momentum={momentum!r} (MODEL.TDE.MOMENTUM) must be in [0, 1).")
        self.num_heads = num_heads
        self.scale = float(scale)
        self.gamma = float(gamma)
        self.momentum = float(momentum)
        self.sync_mean = bool(sync_mean)
        self.eps = _EPS

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
        return t.unflatten(-1, (self.num_heads, t.shape[-1] // self.num_heads))

    def _normalized_feature(self, x):
        """x^k / ‖x^k‖ per head, [R, D] in the weight's dtype (zero chunks stay zero)."""
        xs = self._split(x.to(self.weight.dtype))
        return (xs / xs.norm(p=2, dim=-1, keepdim=True).clamp_min(self.eps)).flatten(-2)

    def _normalized_weight(self):
        """w_i^k / (‖w_i^k‖ + γ) per head, [C+1, D]."""
        ws = self._split(self.weight)
        return (ws / (ws.norm(p=2, dim=-1, keepdim=True) + self.gamma)).flatten(-2)

    def _mean_direction_blocks(self):
        """Block-diagonal [D, K]: column k holds d̂^k = x̄^k / ‖x̄^k‖ in the rows of head k."""
        d = self._split(self.mean_feature.to(self.weight.dtype))  # [K, Dk]
        d = d / d.norm(p=2, dim=-1, keepdim=True).clamp_min(self.eps)
        eye = torch.eye(self.num_heads, dtype=d.dtype, device=d.device)
        return (d.unsqueeze(-1) * eye.unsqueeze(1)).flatten(0, 1)  # [K, Dk, K] -> [D, K]

    @torch.jit.unused
    def _check_input(self, x):
        if x.dim() != 2 or x.shape[1] != self.weight.shape[1]:
            raise ValueError(
                f"Expected region features of shape [R, {self.weight.shape[1]}], got {tuple(x.shape)}."
            )

    # ----------------------------------------------------------------- logits
    def _normalized_input_and_weight(self, x):
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            self._check_input(x)
        return self._normalized_feature(x), self._normalized_weight()

    def forward(self, x):
        """Plain cosine logits y (§1). x: [R, D] -> y: [R, C+1]; y = (τ/K) x̂ Ŵᵀ."""
        xn, wn = self._normalized_input_and_weight(x)
        return (self.scale / self.num_heads) * (xn @ wn.t())

    def counterfactual(self, x):
        """b: [R, C+1] with TDE(y) = y − α·b (§3). Zero while x̄ is zero."""
        return self.logits_and_counterfactual(x)[1]

    def logits_and_counterfactual(self, x):
        """(y, b), both [R, C+1], sharing the per-head normalisation of x and the weight.

        y = (τ/K) x̂ Ŵᵀ;  b = (τ/K) cos · P  with cos = x̂ Dblk [R, K] (cos(x^k, d̂^k)) and
        P = Dblkᵀ Ŵᵀ [K, C+1] (P_ki = <w_i^k, d̂^k> / (‖w_i^k‖+γ)). x̄ = 0 gives b = 0 exactly.
        """
        xn, wn = self._normalized_input_and_weight(x)
        factor = self.scale / self.num_heads
        y = factor * (xn @ wn.t())
        dblk = self._mean_direction_blocks()  # [D, K]
        cos = xn @ dblk  # [R, K]
        proj = dblk.t() @ wn.t()  # [K, C+1]
        return y, factor * (cos @ proj)

    def mean_cosine(self, x):
        """cos(x^k, d̂^k) per region and head, [R, K] (for α heuristics: α·mean cos ≈ 1)."""
        xn, _ = self._normalized_input_and_weight(x)
        return xn @ self._mean_direction_blocks()

    # ----------------------------------------------------------------- mean x̄
    @property
    def has_mean(self) -> bool:
        """False while x̄ is all zero (before the first foreground update). Python only (not
        used by forward: TDE needs no branch on it)."""
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
def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """fp16 / bf16 (autocast) -> fp32; fp32 / fp64 unchanged (scores are never low precision)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def plain_probs(y):
    """softmax(y) over C+1 classes. y: [R, C+1] -> [R, C+1]."""
    return F.softmax(_at_least_fp32(y), dim=-1)


def exempt_logits(y: torch.Tensor, y_tde: torch.Tensor) -> torch.Tensor:
    """Logits s [R, C+1] whose softmax is the background-exempt score (§4); background last.

        s_bg = y_bg,   s_i = y_tde_i + lse_j(y_j) − lse_j(y_tde_j)   (i, j foreground)

    softmax(s) = (1 − p_bg) · q_i / (1 − q_bg) and p_bg, as in :func:`background_exempt_probs`:
    the foreground entries of exp(s) sum to exp(lse(y_fg)), the background one is exp(y_bg).
    y_tde = y gives s = y exactly (the two log-sum-exps are the same number).
    """
    y, y_tde = _at_least_fp32(y), _at_least_fp32(y_tde)
    shift = torch.logsumexp(y[:, :-1], dim=1, keepdim=True) - torch.logsumexp(y_tde[:, :-1], dim=1, keepdim=True)
    return torch.cat([y_tde[:, :-1] + shift, y[:, -1:]], dim=1)


def background_exempt_probs(y, y_tde):
    """Background-exempt scores (§4), background at index -1. [R, C+1] each -> [R, C+1].

        score_bg = p_bg,   score_i = (1 − p_bg) · q_i / (1 − q_bg)   (i fg)

    with p = softmax(y), q = softmax(y_tde), computed as softmax(:func:`exempt_logits`), so the
    foreground scores sum to 1 − p_bg even when p_bg or q_bg is close to 1.
    """
    return F.softmax(exempt_logits(y, y_tde), dim=-1)


def tde_logits(y: torch.Tensor, b: torch.Tensor, alpha: float, background_exempt: bool = True) -> torch.Tensor:
    """Test-time logits [R, C+1] (at least fp32) from (y, b); softmax of them is the TDE score.

    background_exempt=True: ``exempt_logits(y, y − α b)`` (§4).
    background_exempt=False: ``y − α b`` (TDE logits, ordinary softmax: the paper's
    "w/o background exemption" ablation).
    α = 0 or b = 0 (x̄ = 0) give exactly y (in fp32), whose softmax is ``plain_probs(y)``.
    """
    y_tde = _at_least_fp32(y) - alpha * _at_least_fp32(b)
    if background_exempt:
        return exempt_logits(y, y_tde)
    return y_tde


def tde_probs(y, b, alpha, background_exempt=True):
    """Test-time scores softmax(``tde_logits(y, b, α, background_exempt)``): [R, C+1] each -> [R, C+1].

    The same numbers as the box predictor's eval-mode scores under Detectron2's ``predict_probs``;
    α = 0 returns exactly ``plain_probs(y)``.
    """
    if not (isinstance(alpha, (int, float)) and alpha >= 0):
        raise ValueError(f"alpha must be a number >= 0, got {alpha!r}.")
    return F.softmax(tde_logits(y, b, float(alpha), bool(background_exempt)), dim=-1)
