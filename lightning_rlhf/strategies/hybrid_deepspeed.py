"""``HybridDeepSpeedStrategy``: Lightning's DeepSpeed strategy on CPU and CUDA, with several engines per module.

A subclass, so ``DeepSpeedStrategy``'s whole surface keeps working; what it adds is listed in docs/concepts.md.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Optional, Union

import torch
from lightning.fabric.strategies.deepspeed import _validate_device_index_selection
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator
from lightning.pytorch.core.optimizer import LightningOptimizer, _init_optimizers_and_lr_schedulers
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from torch.optim import Optimizer
from typing_extensions import override

import lightning_rlhf.strategies.engine_save_load as engine_save_load
from lightning_rlhf.models.vllm_decode import vllm_missing
from lightning_rlhf.models.zero3 import is_partitioned
from lightning_rlhf.strategies.engine_steps import (
    apply_module_clipping,
    follow_engine_forward,
    keep_accumulated_gradients,
    offload_ready_optimizer,
)
from lightning_rlhf.strategies.engines import (
    EnginePlan,
    check_engine_stages,
    engine_per_child,
    inference_config,
    plan_engines,
    skip_lone_allreduce,
)
from lightning_rlhf.strategies.environment import (
    check_accelerator_and_precision,
    check_positive,
    check_tensor_parallel_layout,
    ranks_with,
    use_cpu_for_deepspeed,
)
from lightning_rlhf.strategies.deepspeed_inference import check_kernels_work
from lightning_rlhf.strategies.generation_replica import GenerationStats, check_backend
from lightning_rlhf.strategies.tp_plans import check_generation_layout

GenerationBackend = Literal["auto", "native", "fast", "deepspeed", "vllm"]


class HybridDeepSpeedStrategy(DeepSpeedStrategy):
    """DeepSpeed ZeRO training with several engines per module and a fast generation switch.

    Args:
        accelerator: as in ``DeepSpeedStrategy`` (CPU and CUDA are supported).
        zero_optimization: enable ZeRO (as in ``DeepSpeedStrategy``).
        stage: ZeRO stage 0-3. Defaults to 3, the stage the generation switch exists for.
        inference_tp_size: ranks per tensor-parallel group in :meth:`generation_mode`; must divide the processes
            per node.
        tp_gather_partition_size: transformer layers gathered at once from ZeRO-3 partitions for the replica.
        release_inference_cache: free the generation replica after every :meth:`generation_mode` exit (True) or
            keep it for the next rollout (False). None (default): free it before the next backward for a fully
            fine-tuned model, whose weights all change at every step so that a kept replica is refilled whole
            anyway (validation batches between two steps still share one), and keep it for a LoRA model, whose
            refresh then gathers only the adapters (``docs/recipes/memory.md``).
        offload_frozen_models: keep frozen children (reference, reward model) ZeRO-3 partitioned on the CPU;
            they must be built inside :meth:`frozen_models_context`.
        generation_backend: ``"auto"``: ``"fast"`` on a float32 CPU replica with ``inference_tp_size`` 1 (measured
            faster there: ``docs/recipes/generation.md``), else ``"native"``: transformers' ``generate`` on the replica
            (PyTorch tensor parallel, CPU and CUDA). ``"fast"``: our decode loop, ``generate``'s greedy tokens (CPU:
            packed weights, one-token attention; CUDA: a compiled static-cache step; ``inference_tp_size`` 1).
            ``"deepspeed"``: fused kernels (CUDA, transformers < 5).
            ``"vllm"``: a vLLM engine in each rank's process, fed the replica's weights in memory after every refresh
            (``inference_tp_size`` 1; the ``vllm`` extra; docs/recipes/generation.md).
        vllm_engine_kwargs: more ``vllm.LLM`` arguments for ``generation_backend="vllm"``, e.g.
            ``{"gpu_memory_utilization": 0.3}``.
        engine_configs: per-child DeepSpeed config overrides keyed by attribute name, e.g.
            ``{"critic": {"gradient_accumulation_steps": 2}}`` (see docs/concepts.md).
        tp_plan: a tensor-parallel plan (module-name pattern to ``"colwise"``/``"rowwise"``) for other families.
        process_group_timeout_s: seconds a rank waits in a collective before failing instead of hanging.
        **kwargs: every other ``DeepSpeedStrategy`` argument (``offload_optimizer``, ``config``, ...).
    """

    strategy_name = "hybrid_deepspeed"

    def __init__(
        self,
        accelerator: Optional[Any] = None,
        zero_optimization: bool = True,
        stage: int = 3,
        inference_tp_size: int = 1,
        tp_gather_partition_size: int = 8,
        release_inference_cache: Optional[bool] = None,
        offload_frozen_models: bool = False,
        generation_backend: GenerationBackend = "auto",
        vllm_engine_kwargs: Optional[dict[str, Any]] = None,
        engine_configs: Optional[dict[str, dict[str, Any]]] = None,
        tp_plan: Optional[dict[str, str]] = None,
        process_group_timeout_s: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        check_positive("inference_tp_size", inference_tp_size)
        check_positive("tp_gather_partition_size", tp_gather_partition_size)
        check_backend(generation_backend, inference_tp_size)
        if generation_backend == "vllm" and (missing := vllm_missing()):
            raise ImportError(missing)
        if generation_backend == "deepspeed":
            check_kernels_work()  # transformers 5 broke DeepSpeed's injection: refuse now, not at the first rollout
        if process_group_timeout_s is not None:
            check_positive("process_group_timeout_s", process_group_timeout_s)
            kwargs["timeout"] = timedelta(seconds=process_group_timeout_s)
        try:
            super().__init__(accelerator=accelerator, zero_optimization=zero_optimization, stage=stage, **kwargs)
        except TypeError as err:
            raise TypeError(
                f"HybridDeepSpeedStrategy: {err}. It accepts every DeepSpeedStrategy argument plus inference_tp_size, "
                "tp_gather_partition_size, release_inference_cache, offload_frozen_models, generation_backend, "
                "vllm_engine_kwargs, "
                "engine_configs, tp_plan and process_group_timeout_s."
            ) from err
        # Lightning writes gradient_clipping into the config later
        self._explicit_clipping = "gradient_clipping" in (self.config or {})
        self.inference_tp_size = inference_tp_size
        self.tp_gather_partition_size = tp_gather_partition_size
        self.release_inference_cache = release_inference_cache
        self.offload_frozen_models = offload_frozen_models
        self.generation_backend = generation_backend
        self.vllm_engine_kwargs = vllm_engine_kwargs
        self.engine_configs = dict(engine_configs or {})
        check_engine_stages(self.config or {}, self.engine_configs)
        self.tp_plan = tp_plan
        self._engines: dict[str, Any] = {}
        self._engine_by_optimizer: dict[int, Any] = {}
        self._applied: dict[int, bool] = {}
        self._offloaded_ids: list[range] = []
        self._live_engines: list[Any] = []
        self._engine_hooks: list[Any] = []
        self._configured_optimizers: Optional[tuple[list, list]] = None
        self.generation_stats = GenerationStats()

    @override
    def setup_environment(self) -> None:
        check_accelerator_and_precision(self.accelerator, getattr(self.precision_plugin, "precision", "32-true"))
        if isinstance(self.accelerator, CPUAccelerator):
            use_cpu_for_deepspeed()
        # Skip DeepSpeedStrategy's CUDA-only check; DDPStrategy sets up the device and the process group.
        DDPStrategy.setup_environment(self)

    @override
    def setup(self, trainer: Any) -> None:
        """Take SIGTERM as a request to stop at the next iteration boundary (:meth:`preemption_requested`):
        Lightning's own handler runs a collective inside the signal handler, which hangs a multi-rank run."""
        self._preemption_requested = False
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None:
            connector._sigterm_notifier_fn = self._note_sigterm
        super().setup(trainer)

    def _note_sigterm(self, signum: Any, frame: Any) -> None:
        if not self._preemption_requested and self.launcher is not None:
            self.launcher.kill(signum)  # the ranks this process started get it too
        self._preemption_requested = True

    def preemption_requested(self) -> bool:
        """Whether any rank received SIGTERM since fit started. Collective: every rank calls it together."""
        return ranks_with(self, getattr(self, "_preemption_requested", False)) > 0

    @override
    def setup_distributed(self) -> None:
        if isinstance(self.accelerator, CUDAAccelerator):
            _validate_device_index_selection(self.parallel_devices)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()
        check_tensor_parallel_layout(self.inference_tp_size, self.world_size, self.num_nodes)

    @override
    def on_exception(self, exception: BaseException) -> None:
        # the ranks Lightning's launcher started would otherwise stay blocked on the dead collective forever
        super().on_exception(exception)
        for proc in getattr(self.launcher, "procs", None) or []:
            if proc.poll() is None:
                proc.kill()

    @override
    def _format_batch_size_and_grad_accum_config(self) -> None:
        super()._format_batch_size_and_grad_accum_config()
        if self.lightning_module is not None:
            apply_module_clipping(self.config, self.lightning_module, self._explicit_clipping)

    def _deepspeed_args(self) -> argparse.Namespace:
        # the CPU device has no index for DeepSpeed's ``device_rank``
        index = self.root_device.index
        return argparse.Namespace(device_rank=self.local_rank if index is None else index)

    @override
    def _setup_model_and_optimizer(self, model: nn.Module, optimizer: Optional[Optimizer], lr_scheduler: Any = None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=self._deepspeed_args(),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=offload_ready_optimizer(optimizer, self.config),
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        skip_lone_allreduce(engine)
        return engine, ds_optimizer

    @contextmanager
    @override
    def model_sharded_context(self) -> Iterator[None]:
        """``deepspeed.zero.Init`` for stage 3, with transformers told about it (else it crashes on empty shards)."""
        from lightning_rlhf.models.loading import zero3_loading

        with super().model_sharded_context(), zero3_loading(self.config if self.zero_stage == 3 else None):
            yield

    @contextmanager
    def frozen_models_context(self) -> Iterator[None]:
        """Build frozen children here; with ``offload_frozen_models`` under ZeRO-3 they partition on the CPU."""
        if self.zero_stage != 3 or not self.offload_frozen_models:
            yield
            return
        from deepspeed.runtime.zero.partition_parameters import Init

        from lightning_rlhf.strategies.frozen_models import frozen_models_init

        start = Init.param_id
        with frozen_models_init(inference_config(self.config, self.zero_stage, offload=True)):
            yield
        self._offloaded_ids.append(range(start, Init.param_id))  # ZeRO-3 numbers parameters as it creates them

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage of the trained engines (0 when ZeRO is off)."""
        zero = (self.config or {}).get("zero_optimization") or {}
        return int(zero.get("stage", 0))

    @property
    def engines(self) -> Mapping[str, Any]:
        """The DeepSpeed engines by child name when the module has several (empty for a single-model module)."""
        return dict(self._engines)

    @override
    def _init_optimizers(self):
        if self._configured_optimizers is None:
            return super()._init_optimizers()
        optimizers, schedulers = self._configured_optimizers
        return optimizers[0], schedulers[0] if schedulers else None

    @override
    def init_deepspeed(self) -> None:
        self._destroy_engines()
        module = self.lightning_module
        check_generation_layout(module, self.inference_tp_size, self.tp_plan)
        fitting = module.trainer is not None and module.trainer.state.fn == TrainerFn.FITTING
        several = engine_per_child(module)
        self._configured_optimizers = None
        if fitting and "optimizer" not in self.config:
            self._configured_optimizers = _init_optimizers_and_lr_schedulers(module)
            several = several or len(self._configured_optimizers[0]) > 1
        if not several:
            super().init_deepspeed()
            self._live_engines.append(self.model)
            return
        optimizers, schedulers = self._configured_optimizers or ([], [])
        self._initialize_several_engines(module, optimizers, schedulers, inference_only=not fitting)

    @override
    def _initialize_deepspeed_inference(self, model: nn.Module) -> None:
        # Lightning's version passes device_rank=None on CPU, which DeepSpeed cannot take.
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        remove_module_hooks(model)
        self.model, *_ = deepspeed.initialize(
            args=self._deepspeed_args(), config=inference_config(self.config, self.zero_stage, offload=False),
            model=model, optimizer=None, lr_scheduler=None, model_parameters=[], dist_init_required=False,
        )

    def _initialize_several_engines(
        self, module: nn.Module, optimizers: list, scheduler_configs: list, inference_only: bool = False
    ) -> None:
        frozen = inference_config(self.config, self.zero_stage, self.offload_frozen_models)
        plans = plan_engines(module, optimizers, self.config, frozen, self.engine_configs, inference_only)
        self._warn_frozen_not_offloaded([p for p in plans if not p.trainable])
        ds_optimizers: dict[int, Any] = {}
        for plan in plans:
            engine, ds_optimizer = self._initialize_engine(plan)
            self._engines[plan.name] = engine
            self._live_engines.append(engine)
            if plan.trainable:
                ds_optimizers[plan.optimizer_index] = ds_optimizer
                self._engine_by_optimizer[id(ds_optimizer)] = engine
                self._engine_by_optimizer[id(plan.optimizer)] = engine
                self._engine_hooks.extend(follow_engine_forward(engine))
        self._set_deepspeed_activation_checkpointing()
        self.optimizers = [ds_optimizers[i] for i in sorted(ds_optimizers)]
        for optimizer in self._lightning_optimizers:
            keep_accumulated_gradients(optimizer, self._engine_for(optimizer))
        self.lr_scheduler_configs = list(scheduler_configs)
        self.model = module
        summary = ", ".join(f"{p.name} ({'trainable' if p.trainable else 'frozen'}, ZeRO-"
                            f"{p.config['zero_optimization']['stage']})" for p in plans)
        rank_zero_info(f"HybridDeepSpeedStrategy: one DeepSpeed engine per child: {summary}")

    def _warn_frozen_not_offloaded(self, frozen: list[EnginePlan]) -> None:
        """With ``offload_frozen_models``, name the frozen children built outside :meth:`frozen_models_context`:
        ZeRO-3 never moves a partition, so theirs stay where the training ``zero.Init`` put them."""
        if self.zero_stage != 3 or not self.offload_frozen_models:
            return
        outside = [plan.name for plan in frozen if any(
            is_partitioned(p) and not any(p.ds_id in ids for ids in self._offloaded_ids)
            for p in plan.module.parameters())]
        if outside:
            rank_zero_warn(
                f"offload_frozen_models: frozen {', '.join(outside)} built outside "
                f"`with frozen_models(strategy):` (lightning_rlhf.strategies.frozen_models), so their ZeRO-3 "
                f"partitions stay on {self.root_device} instead of the CPU; build them inside it in configure_model."
            )

    def _destroy_engines(self) -> None:
        """Remove an earlier stage's engine hooks, or ZeRO-3's prefetch trace breaks ("pop from an empty deque")."""
        for handle in self._engine_hooks:
            handle.remove()
        for engine in self._live_engines:
            engine.destroy()
        self._engine_hooks.clear()
        self._live_engines.clear()
        self._engines.clear()
        self._engine_by_optimizer.clear()

    def _initialize_engine(self, plan: EnginePlan) -> tuple[Any, Any]:
        import deepspeed

        params = [p for p in plan.module.parameters() if p.requires_grad] if plan.trainable else None
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=self._deepspeed_args(),
            config=plan.config,
            model=plan.module,
            model_parameters=params,
            optimizer=offload_ready_optimizer(plan.optimizer, plan.config),
            dist_init_required=False,
        )
        if not plan.trainable:
            engine.eval()
        skip_lone_allreduce(engine)
        return engine, ds_optimizer

    def _engine_for(self, optimizer: Any) -> Any:
        optimizer = getattr(optimizer, "_optimizer", optimizer)
        if optimizer is not None and id(optimizer) in self._engine_by_optimizer:
            return self._engine_by_optimizer[id(optimizer)]
        trainable = {id(e): e for e in self._engine_by_optimizer.values()}
        if optimizer is None and len(trainable) == 1:
            return next(iter(trainable.values()))
        raise ValueError(
            "With several DeepSpeed engines, say which one a loss belongs to: "
            "`actor_opt, critic_opt = self.optimizers(); self.manual_backward(loss, actor_opt); actor_opt.step()`."
        )

    @override
    def backward(self, closure_loss: torch.Tensor, optimizer: Optional[Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if optimizer is None and args and isinstance(args[0], (Optimizer, LightningOptimizer)):
            optimizer, args = args[0], args[1:]  # manual_backward(loss, opt): the engine to step, not a backward arg
        if self.release_inference_cache is None:  # the default: no full replica held through backward and step
            from lightning_rlhf.strategies.generation import release_idle_replicas

            release_idle_replicas()
        if not self._engines:
            return super().backward(closure_loss, optimizer, *args, **kwargs)
        engine = self._engine_for(optimizer)
        module = self.lightning_module
        closure_loss = self.precision_plugin.pre_backward(closure_loss, module)
        engine.backward(closure_loss, *args, **kwargs)
        return self.precision_plugin.post_backward(closure_loss, module)

    @override
    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        if not self._engines:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        engine = self._engine_for(optimizer)
        closure()
        self.precision_plugin._after_closure(self.lightning_module, getattr(optimizer, "_optimizer", optimizer))
        result = engine.step(**kwargs)
        self._applied[id(engine)] = self._applied.get(id(engine), False) or engine.was_step_applied()
        return result

    def reset_applied_steps(self) -> None:
        """Start a new record of which engines applied a step (an online iteration calls this first)."""
        self._applied.clear()

    def applied_since_reset(self, optimizer: Any = None, child: Optional[str] = None) -> bool:
        """Whether the engine of ``optimizer`` (or of the child module ``child``) applied at least one step since
        :meth:`reset_applied_steps`: an fp16 overflow (or a NaN gradient) skips a step, and a skipped step advances
        neither that engine's learning-rate schedule nor an EMA, as in DeepSpeed."""
        if not self._engines:
            return True  # one engine around the module: Lightning's own DeepSpeed path, nothing recorded here
        engine = self._engines[child] if child is not None else self._engine_for(optimizer)
        return self._applied.get(id(engine), False)

    @contextmanager
    def generation_mode(self, model: nn.Module) -> Iterator[Any]:
        """Switch ``model`` (a child such as ``self.actor``) to a hook-free, tensor-parallel generation replica.

        Yields an object with ``.generate(input_ids, attention_mask, **kwargs)`` and a plain forward.
        """
        from lightning_rlhf.strategies.generation import generation_mode

        with generation_mode(
            model,
            inference_tp_size=self.inference_tp_size,
            tp_gather_partition_size=self.tp_gather_partition_size,
            release_inference_cache=self.release_inference_cache,
            backend=self.generation_backend,
            engine_kwargs=self.vllm_engine_kwargs,
            tp_plan=self.tp_plan,
            stats=self.generation_stats,
        ) as replica:
            yield replica

    @override
    def save_checkpoint(self, checkpoint: dict, filepath: Union[str, Path], storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("HybridDeepSpeedStrategy does not use CheckpointIO, so `storage_options` is not supported.")
        engine_save_load.save(self, checkpoint, filepath, super().save_checkpoint)

    def trainable_engines(self) -> dict[str, Any]:
        """The engines that have an optimizer, by child name (empty for a single-model module)."""
        trainable = {id(e) for e in self._engine_by_optimizer.values()}
        return {name: e for name, e in self._engines.items() if id(e) in trainable}

    @override
    def load_checkpoint(self, checkpoint_path: Union[str, Path], weights_only: Optional[bool] = None) -> dict[str, Any]:
        if self.load_full_weights and self.zero_stage == 3:
            return super().load_checkpoint(checkpoint_path, weights_only)
        load_single = super().load_checkpoint
        return engine_save_load.load(self, checkpoint_path, lambda path: load_single(path, weights_only))

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        presets = {
            "hybrid_deepspeed": ("Hybrid DeepSpeed: ZeRO-3 training, tensor-parallel generation", {"stage": 3}),
            "hybrid_deepspeed_stage_2": ("Hybrid DeepSpeed with ZeRO stage 2", {"stage": 2}),
            "hybrid_deepspeed_stage_3_offload": (
                "Hybrid DeepSpeed with ZeRO stage 3 and CPU offload of parameters and optimizer",
                {"stage": 3, "offload_optimizer": True, "offload_parameters": True},
            ),
        }
        for name, (description, params) in presets.items():
            strategy_registry.register(name, cls, description=description, override=True, **params)
