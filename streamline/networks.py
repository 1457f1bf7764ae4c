"""Lightweight networks that replace a pruned block (besides `transformer`, a decoder layer).

Self-contained on purpose (torch only): this file is also copied into exported model
directories as their remote code, so the networks load with trust_remote_code=True.
Each network takes a decoder layer's call (hidden states plus keyword arguments it ignores)
and returns the new hidden states, so it drops into the model's layer list.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(kind: str, size: int, eps: float) -> nn.Module:
    return RMSNorm(size, eps) if kind == "rms" else nn.LayerNorm(size, eps=eps)


ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class ResidualFFN(nn.Module):
    """`ffn`: x + down(act(up(norm(x)))), the reference's Linear-activation-Linear with a residual."""

    def __init__(
        self, hidden: int, inner: int, act: str = "relu", norm: str = "rms", eps: float = 1e-6, bias: bool = True
    ):
        super().__init__()
        self.norm = make_norm(norm, hidden, eps)
        self.up = nn.Linear(hidden, inner, bias=bias)
        self.act = ACTIVATIONS[act]()
        self.down = nn.Linear(inner, hidden, bias=bias)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states + self.down(self.act(self.up(self.norm(hidden_states))))

    @classmethod
    def from_spec(cls, spec: dict) -> "ResidualFFN":
        return cls(spec["hidden"], spec["inner"], spec["act"], spec["norm"], spec["eps"], spec["bias"])

    @property
    def out_proj(self) -> nn.Linear:
        """The last projection: zeroed, the network starts as the identity (the residual alone)."""
        return self.down


class ResidualSwiGLU(nn.Module):
    """`swiglu`: x + down(silu(gate(norm(x))) * up(norm(x))), the Llama MLP shape with a residual."""

    def __init__(self, hidden: int, inner: int, norm: str = "rms", eps: float = 1e-6, bias: bool = False):
        super().__init__()
        self.norm = make_norm(norm, hidden, eps)
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = self.norm(hidden_states)
        return hidden_states + self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))

    @classmethod
    def from_spec(cls, spec: dict) -> "ResidualSwiGLU":
        return cls(spec["hidden"], spec["inner"], spec["norm"], spec["eps"], spec["bias"])

    @property
    def out_proj(self) -> nn.Linear:
        return self.down_proj


# The custom networks by name: a new one is a class here (from_spec, out_proj), its name in layout.NETS and the
# schema, and its sizes in each family adapter's network_spec (test_schema_agrees checks the names agree).
NETWORKS = {"ffn": ResidualFFN, "swiglu": ResidualSwiGLU}


def build_network(spec: dict) -> nn.Module:
    """A network from the `replacement` spec stored in an exported model's config."""
    if spec["net"] not in NETWORKS:
        raise ValueError(f"no custom network '{spec['net']}'")
    return NETWORKS[spec["net"]].from_spec(spec)


def with_network(base: type, layers_path: str) -> type:
    """`base` (a family's CausalLM class) whose layer slot config.streamline["replacement"]["index"] holds the
    network the spec describes. The one definition, used in-process and by exported dirs' remote code."""

    class StreamlineForCausalLM(base):
        def __init__(self, config):
            super().__init__(config)
            spec = config.streamline["replacement"]
            layers = self
            for name in layers_path.split("."):
                layers = getattr(layers, name)
            layers[spec["index"]] = build_network(spec)

    StreamlineForCausalLM.__name__ = StreamlineForCausalLM.__qualname__ = "StreamlineForCausalLM"
    return StreamlineForCausalLM
