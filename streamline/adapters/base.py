"""What streamline needs to know about a model family, in one small class.

Each family (Llama-like, OPT, ...) is one module in this package with a subclass of
`Adapter` bound to the name ADAPTER. Adding a family means adding one file.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

# torch and transformers are imported inside methods: the Snakefile consults this registry at
# parse time, and importing them costs ~10 s on every `snakemake` call.
if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the last needed layer has run."""


@dataclass(frozen=True)
class Sizes:
    """A model's widths and parameter counts, from its config.json alone (plain arithmetic: the resource plan
    runs at every Snakefile parse)."""

    layers: int
    hidden: int
    inner: int  # the MLP's width
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_params: int  # one decoder layer
    embed_params: int  # the input embedding table (a lookup reads one row per token)
    head_params: int  # the LM head's matrix; 0 when it is tied to the embeddings
    other_params: int  # final norm, learned positions, projections

    def params(self, layers: int | None = None) -> int:
        """Every parameter of the model with `layers` decoder layers (default: all of them)."""
        n = self.layers if layers is None else layers
        return n * self.layer_params + self.embed_params + self.head_params + self.other_params

    def layer_flops(self, tokens: int, seq_len: int) -> float:
        """Forward FLOPs of one decoder layer on `tokens` tokens in blocks of seq_len: its matmuls, and the
        causal attention's two products (half of the T x T scores)."""
        return 2.0 * self.layer_params * tokens + 2.0 * self.heads * self.head_dim * seq_len * tokens

    def head_flops(self, tokens: int) -> float:
        return 2.0 * self.vocab * self.hidden * tokens


class Adapter:
    model_types: tuple[str, ...] = ()
    layers_path: str = ""  # attribute path of the decoder layer list, e.g. "model.layers"
    mlp_net: str = ""  # the lightweight net whose shape equals this family's own MLP

    def sizes(self, config: dict) -> Sizes:
        """Widths and parameter counts from a config.json's fields."""
        raise NotImplementedError

    def network_spec(self, config: PretrainedConfig, net: str) -> dict:
        """Sizes, norm and activation of an `ffn` or `swiglu` replacement for this family."""
        raise NotImplementedError

    def copy_mlp(self, layer: nn.Module, network: nn.Module) -> None:
        """Initialise a `mlp_net` network from a decoder layer's own MLP and its pre-MLP norm."""
        raise NotImplementedError

    # --- layout -----------------------------------------------------------------------------
    def layers(self, model: PreTrainedModel) -> nn.ModuleList:
        module = model
        for name in self.layers_path.split("."):
            module = getattr(module, name)
        return module

    def rotary(self, model: PreTrainedModel) -> nn.Module | None:
        """The module a standalone layer call needs besides the layer itself (rotary embeddings)."""
        return None

    def head(self, model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the RAW output of the last layer: the final norm (and projection), then the LM head."""
        raise NotImplementedError

    # --- one layer, standalone ----------------------------------------------------------------
    def layer_kind(self, config: PretrainedConfig, layer_idx: int) -> str:
        """Layers of the same kind take the same keyword arguments (e.g. full vs sliding-window attention)."""
        return "full"

    def layer_kwargs(
        self,
        config: PretrainedConfig,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        layer_idx: int,
        rotary: nn.Module | None = None,
    ) -> dict:
        """Keyword arguments that make `layer(hidden, **kwargs)` equal the layer's call inside the model."""
        raise NotImplementedError

    def run_layer(
        self, model: PreTrainedModel, layer_idx: int, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        layer = self.layers(model)[layer_idx]
        kwargs = self.layer_kwargs(model.config, hidden, attention_mask, layer_idx, self.rotary(model))
        out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    # --- capture raw hidden states ------------------------------------------------------------
    def mlp_sublayer(self, layer: nn.Module) -> tuple[nn.Module, nn.Module]:
        """(module whose INPUT is the residual entering the MLP, module whose OUTPUT is the MLP's
        contribution to the residual): a layer's output is Y + M with Y, M what they see."""
        raise NotImplementedError

    def mlp_out_proj(self, layer: nn.Module) -> nn.Linear:
        """The MLP's last linear map, whose output is M (the one a linear map on M folds into)."""
        raise NotImplementedError

    @contextmanager
    def capture(
        self,
        model: PreTrainedModel,
        on_hidden: Callable[[int | str, torch.Tensor], None],
        last: int | None = None,
        sublayers: tuple[int, ...] = (),
    ) -> Iterator[None]:
        """Call on_hidden(k, h_k) for h_0 (input of layer 0) and h_k = RAW output of layer k-1.

        HF's hidden_states[-1] has the final norm applied; hooks see the layer outputs before it.
        With `last`, the forward stops (StopForward) after h_last, so later layers never run.
        For each layer l in `sublayers`, also on_hidden(f"y{l}", Y) and on_hidden(f"m{l}", M): the residual
        entering its MLP and the MLP's output (h_{l+1} = Y + M).
        """
        layers = self.layers(model)
        stop_at = len(layers) if last is None else last
        sub_handles, shapes = [], {}
        for l in sublayers:  # some families (OPT) flatten tokens inside the layer: report [B, T, H] like h_k
            before, mlp = self.mlp_sublayer(layers[l])
            sub_handles.append(
                layers[l].register_forward_pre_hook(
                    lambda module, args, kwargs, l=l: shapes.__setitem__(
                        l, (args[0] if args else kwargs["hidden_states"]).shape
                    ),
                    with_kwargs=True,
                )
            )
            sub_handles.append(
                before.register_forward_pre_hook(
                    lambda module, args, l=l: on_hidden(f"y{l}", args[0].reshape(shapes[l]))
                )
            )
            sub_handles.append(
                mlp.register_forward_hook(
                    lambda module, args, out, l=l: on_hidden(
                        f"m{l}", (out[0] if isinstance(out, tuple) else out).reshape(shapes[l])
                    )
                )
            )

        def pre_hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            on_hidden(0, h)
            if stop_at == 0:
                raise StopForward

        def make_post_hook(k: int):
            def post_hook(module, args, output):
                on_hidden(k, output[0] if isinstance(output, tuple) else output)
                if k == stop_at:
                    raise StopForward

            return post_hook

        handles = sub_handles + [layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        handles += [
            layer.register_forward_hook(make_post_hook(i + 1)) for i, layer in enumerate(layers) if i + 1 <= stop_at
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    # --- surgery ------------------------------------------------------------------------------
    def set_layers(self, model: PreTrainedModel, layers: nn.ModuleList) -> None:
        parent, _, name = self.layers_path.rpartition(".")
        module = model
        for part in parent.split("."):
            module = getattr(module, part)
        setattr(module, name, layers)

    def remove_layers(self, model: PreTrainedModel, indices: list[int]) -> PreTrainedModel:
        """Delete decoder layers in place, renumber what remains, and fix the config."""
        from torch import nn

        drop = set(indices)
        kept = [layer for i, layer in enumerate(self.layers(model)) if i not in drop]
        for new_idx, layer in enumerate(kept):
            attn = getattr(layer, "self_attn", None)
            if attn is not None and hasattr(attn, "layer_idx"):
                attn.layer_idx = new_idx
            if hasattr(layer, "layer_idx"):
                layer.layer_idx = new_idx
        self.set_layers(model, nn.ModuleList(kept))
        layer_types = getattr(model.config, "layer_types", None)
        if layer_types:
            model.config.layer_types = [t for i, t in enumerate(layer_types) if i not in drop]
        model.config.num_hidden_layers = len(kept)
        return model


def run_with_capture(
    adapter: Adapter,
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    on_hidden: Callable[[int | str, torch.Tensor], None],
    last: int | None = None,
    inference: bool = True,
    sublayers: tuple[int, ...] = (),
) -> None:
    """One forward pass that reports every raw hidden state up to h_last, then stops.

    It runs the base model only: the LM head (a vocab-sized matmul per token) is never needed.
    `inference=False` runs under no_grad instead of inference_mode, so that the states can feed a
    computation that is differentiated later (training on top of a frozen prefix).
    """
    import torch

    with (
        adapter.capture(model, on_hidden, last=last, sublayers=sublayers),
        torch.inference_mode() if inference else torch.no_grad(),
    ):
        try:
            model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except StopForward:
            pass
