"""The reward encoder q_φ of X-KD (docs/method.md, "The reward encoder"; Eq. 14/20).

The paper leaves q_φ open; following AVA (same authors) it is a linear head on the student's last
decoder hidden state producing the mean μ and log-std log σ of a Gaussian q_φ = N(μ, σ²) over the
reward at each target position.  It shares the student backbone: its gradient reaches the
transformer through the hidden states.

* Zero init (weight and bias): μ = 0, σ = 1, i.e. q_φ starts at the prior N(0, 1), where the KL term
  of F_ex and its gradient are exactly 0 (so λ = 0 reproduces the baseline bit for bit).
* log σ is clamped to [-5, 5] with ``torch.clamp``, whose gradient is the identity inside the range
  (in particular at the init value 0).
* Computed in float32 whatever the backbone dtype (keep the head's parameters in float32).
* ``reward_position="next"`` (default) reads h_{t+1}, the state after the action, which is what Eq. 14/20
  condition q_φ on (x, y_{1:t+1}); ``reward_position="current"`` (an ablation) reads h_t, the state whose
  logits predict y_t; docs/method.md compares the two.  For ``"next"`` the last position
  has no successor and reads a zero vector (so μ and log σ there are the biases); that position can
  never carry a TD term, since m_td[b, T-1] does not exist and the last valid token of any row has
  no next action.
* :meth:`RewardHead.save` / :meth:`RewardHead.load` store the head on its own in safetensors (with
  its configuration as metadata): it is saved with a student run but is not part of the exported
  student.

Shapes: ``hidden`` is ``B x T x H`` (T aligned with the labels, like the logits); ``mu`` and
``log_sigma`` are ``B x T`` float32.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from xkd_cli.core.errors import XKDError
from xkd_cli.core.hparams import REWARD_POSITIONS

LOG_SIGMA_BOUND = 5.0
_FORMAT = "xkd-reward-head-v1"


class RewardHead(nn.Module):
    def __init__(self, hidden_size: int, reward_position: str = "next", log_sigma_bound: float = LOG_SIGMA_BOUND):
        super().__init__()
        if reward_position not in REWARD_POSITIONS:
            raise XKDError(f"unknown reward head position {reward_position!r}; use one of: "
                           f"{', '.join(REWARD_POSITIONS)}.")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size
        self.reward_position = reward_position
        self.log_sigma_bound = float(log_sigma_bound)
        self.proj = nn.Linear(hidden_size, 2, dtype=torch.float32)  # h -> (μ, log σ)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """``hidden`` B x T x H -> (μ, log σ), each B x T float32."""
        h = hidden.float()  # B x T x H
        if self.reward_position == "next":
            h = torch.cat([h[:, 1:], torch.zeros_like(h[:, :1])], dim=1)  # h_{t+1}; zeros after the last
        with torch.autocast(device_type=h.device.type, enabled=False):  # float32 even under --mixed-precision
            out = F.linear(h, self.proj.weight.float(), self.proj.bias.float())  # B x T x 2
        mu, log_sigma = out.unbind(-1)
        return mu, log_sigma.clamp(-self.log_sigma_bound, self.log_sigma_bound)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, reward_position={self.reward_position!r}, "
                f"log_sigma_bound={self.log_sigma_bound}")

    def save(self, path: str | os.PathLike) -> None:
        """Write the head's weights and configuration to one safetensors file."""
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        metadata = {
            "format": _FORMAT,
            "hidden_size": str(self.hidden_size),
            "position": self.reward_position,  # the file format's key, kept so saved heads still load
            "log_sigma_bound": repr(self.log_sigma_bound),
        }
        save_file(tensors, os.fspath(path), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "RewardHead":
        """Rebuild a head written by :meth:`save` (weights and configuration)."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise XKDError(f"reward head file {path!r} does not exist; point to the run's reward_head.safetensors.")
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise XKDError(f"{path!r} is not an xkd reward head (format {metadata.get('format')!r}).")
            state = {k: f.get_tensor(k) for k in f.keys()}
        head = cls(int(metadata["hidden_size"]), metadata["position"], float(metadata["log_sigma_bound"]))
        head.load_state_dict(state)
        return head.to(device)
