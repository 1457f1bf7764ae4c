"""accelerate (and DeepSpeed) around the training loop: one process or many, CPU or GPU.

Every loss runs under an `Accelerator`. Run in-process (`streamline train` without a launcher), it is
one plain process; under `accelerate launch` (streamline/launch.py) it is DDP or DeepSpeed ZeRO-2,
on GPUs or, for tests and demos, CPU processes over gloo.
"""

from __future__ import annotations

import importlib
import logging
import os
from contextlib import contextmanager
from typing import Iterator

import torch

from .settings import TrainSettings

log = logging.getLogger(__name__)


def launched() -> bool:
    """Under accelerate launch / torchrun (else one plain process)."""
    return "LOCAL_RANK" in os.environ


def _no_deepspeed_jit_ops() -> None:
    """On CPU, DeepSpeed JIT-compiles a shared-memory all-reduce op (1-4 min) when it sets up its
    communication backend. It is only a speed-up over gloo: skip it, so nothing ever compiles."""
    # not `import deepspeed.comm.torch as m`: deepspeed.comm has an attribute `torch` (the torch package)
    ds_torch = importlib.import_module("deepspeed.comm.torch")
    ds_torch.build_shm_op = lambda: None


@contextmanager
def accelerator_for(settings: TrainSettings, mixed_precision: str | None) -> Iterator:
    """An Accelerator for one training run; in-process, accelerate's global state is reset afterwards.

    mixed_precision: "no", "bf16", "fp16", or None to take the launch config's.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import InitProcessGroupKwargs

    kwargs = []
    if launched() and not torch.cuda.is_available():
        kwargs.append(InitProcessGroupKwargs(backend="gloo"))
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            _no_deepspeed_jit_ops()
    if not launched():
        from ..loading import resolve_device

        resolve_device(settings.device)  # one line if the device asked for is not here
    cpu = not launched() and (settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()))
    accelerator = Accelerator(
        gradient_accumulation_steps=settings.gradient_accumulation_step,
        cpu=cpu,
        mixed_precision=mixed_precision,
        step_scheduler_with_optimizer=False,
        kwargs_handlers=kwargs,
    )
    if accelerator.state.deepspeed_plugin is not None:
        ds = accelerator.state.deepspeed_plugin.deepspeed_config
        # the loop reads its own batches (no prepared dataloader), so DeepSpeed learns the micro-batch here
        ds["train_micro_batch_size_per_gpu"] = settings.batch_size
        for key, value in (
            ("gradient_clipping", settings.max_grad_norm),
            ("gradient_accumulation_steps", settings.gradient_accumulation_step),
        ):
            if ds.get(key, "auto") not in ("auto", value):
                log.warning("DeepSpeed config has %s = %s; the training setting %s wins", key, ds[key], value)
            ds[key] = value
    try:
        yield accelerator
    finally:
        if not launched():  # accelerate's state is process-global: leave none behind for the next run
            AcceleratorState._reset_state(True)
            GradientState._reset_state()


def is_deepspeed(accelerator) -> bool:
    return accelerator.state.deepspeed_plugin is not None


def gather_trainable(accelerator, module, names: list[str]) -> dict[str, torch.Tensor] | None:
    """The network's weights (DeepSpeed: from its fp32 master copy) in the model's dtype, as the export writes
    them, on the main process only.

    Collective under DeepSpeed: every process must call it. Names are those of the pruned model.
    """
    replaced = accelerator.unwrap_model(module)
    params = dict(replaced.model.named_parameters())
    out = {}
    for n in names:
        full = None
        if is_deepspeed(accelerator):
            from deepspeed.utils import safe_get_full_fp32_param

            full = safe_get_full_fp32_param(params[n])
        if accelerator.is_main_process:
            out[n] = (params[n].detach() if full is None else full).to(dtype=replaced.dtype, device="cpu", copy=True)
    return out if accelerator.is_main_process else None


def checkpoint_kwargs(accelerator) -> tuple[dict, dict]:
    """(save_state, load_state) keyword arguments: checkpoints hold the trainable weights only."""
    if is_deepspeed(accelerator):
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    accelerator.register_save_state_pre_hook(_keep_trainable)
    return {}, {"strict": False}


def _keep_trainable(models, weights, output_dir) -> None:  # accelerator.save_state pre-hook (non-DeepSpeed)
    for model, state in zip(models, weights):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in trainable]:
            del state[key]


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """While a checkpoint loads, every torch.load is weights_only: DeepSpeed's checkpoint engine asks for
    weights_only=False, which would run a pickle planted in a checkpoint file. Its ZeRO checkpoints hold
    plain containers, tensors and a few DeepSpeed enums and versions, allowed here by name."""
    original = torch.load

    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = load
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            yield
    finally:
        torch.load = original


def _deepspeed_globals() -> list:
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:
        return []
    import argparse
    from collections import OrderedDict

    return [ZeroStageEnum, fragment_address, LossScaler, DynamicLossScaler, argparse.Namespace, OrderedDict]
