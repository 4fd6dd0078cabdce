"""2-rank worker: generation_mode on ZeRO-3 engines matches plain unsharded copies token for token.

Usage: ``generation_worker.py CHECKS MODEL_DIR...`` where CHECKS is a comma-separated list of
``family:tp:plain|lora[:step][:sample][:z2][:refresh][:base]`` cases (e.g. ``llama:2:lora:step``) and each
MODEL_DIR is a saved tiny model whose folder name starts with its family. Each case builds a real DeepSpeed ZeRO-3
(``z2``: ZeRO-2) engine (gloo, CPU) and a plain reference copy of the same weights (LoRA merged), then
checks, on ragged per-rank prompts: greedy generation inside ``generation_mode`` equals the reference's,
forward logits agree, trained weights are untouched after exit, (``step``) after one optimizer step on
both they still agree, and (``sample``) top-p sampling draws what the reference draws with the same seed
(with tensor parallelism: the group shares one seed over the gathered batch). ``refresh`` counts what each entry
gathers (nothing without a change; after a LoRA step the adapters' bytes only) and checks the refreshed replica
against a freshly built one bit for bit; ``base`` then changes a frozen base weight under LoRA (as a checkpoint
load would): its layer group is gathered and copied whole again.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from lightning_rlhf.strategies.environment import use_cpu_for_deepspeed
from lightning_rlhf.strategies.generation import _CACHE, generation_mode
from lightning_rlhf.strategies.generation_replica import GenerationReplica, GenerationStats, _gather_rows
from lightning_rlhf.strategies.tensor_parallel import InferenceReplica

LORA_TARGETS = {"llama": ["q_proj", "v_proj", "down_proj"], "opt": ["q_proj", "v_proj", "fc2"],
                "gpt2": ["c_attn", "c_fc"], "gpt_neox": ["query_key_value"],
                "bloom": ["query_key_value", "dense_4h_to_h"], "gptj": ["q_proj", "fc_in"]}
GEN = dict(max_new_tokens=6, do_sample=False)
DEVICE = torch.device(os.environ.get("GENERATION_DEVICE", "cpu"))  # "cuda": the same checks on GPUs with NCCL


def zero_engine(model: torch.nn.Module, stage: int):
    params = [p for p in model.parameters() if p.requires_grad]
    # no clipping (DeepSpeed's default is 1.0): the reference loop does not clip either; no persistent parameters
    # (by default those under 1e5 elements, i.e. all of a tiny model, stay whole on every rank): every gather is real
    zero = {"stage": stage, **({"stage3_param_persistence_threshold": 0} if stage == 3 else {})}
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
              "zero_optimization": zero, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(params, lr=5e-3), config=config)
    return engine


def build(path: Path, family: str, lora: bool):
    """(model to put under ZeRO-3, plain reference with LoRA merged, reference optimizer)."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(DEVICE)
    if lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family], init_lora_weights=False,
                            fan_in_fan_out=family == "gpt2", lora_dropout=0.0)
        model = get_peft_model(model, config)
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=5e-3)
    return model, reference, ref_opt


def merged(reference: torch.nn.Module) -> torch.nn.Module:
    if hasattr(reference, "merge_and_unload"):
        return copy.deepcopy(reference).merge_and_unload()
    return reference


def prompts(vocab: int, pad: int):
    """Different, ragged, left-padded prompts per rank: rank 0 has 3 rows of 7, rank 1 2 rows of 5."""
    rank = dist.get_rank()
    gen = torch.Generator().manual_seed(100 + rank)
    rows, length = (3, 7) if rank == 0 else (2, 5)
    ids = torch.randint(4, vocab, (rows, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one row with extra left padding
    return ids.masked_fill(mask == 0, pad).to(DEVICE), mask.to(DEVICE)


def gathered_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {n: p.detach().clone() for n, p in params.items()}


def same_tokens(a: torch.Tensor, b: torch.Tensor, pad: int) -> bool:
    width = max(a.shape[1], b.shape[1])
    pad_to = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad)  # noqa: E731
    return torch.equal(pad_to(a), pad_to(b))


def check(model, reference, ids, mask, tp: int, tag: str, stats: GenerationStats) -> torch.Tensor:
    pad = reference.config.pad_token_id
    plain = merged(reference).eval()
    with torch.no_grad():
        expected = plain.generate(input_ids=ids, attention_mask=mask, **GEN)
        expected_logits = plain(input_ids=ids, attention_mask=mask).logits
    with generation_mode(model, inference_tp_size=tp, stats=stats, tp_gather_partition_size=1) as policy:
        got = policy.generate(ids, mask, **GEN)
        logits = policy(ids, mask).logits
    assert same_tokens(got, expected, pad), f"{tag}: generation differs\n{got}\n{expected}"
    assert got.shape[0] == ids.shape[0] and torch.equal(got[:, : ids.shape[1]], ids), f"{tag}: prompt rows changed"
    real = mask.bool()  # logits at padding positions are arbitrary (fully masked attention rows)
    error = (logits[real] - expected_logits[real]).abs().max().item()
    assert error < (1e-4 if DEVICE.type == "cpu" else 2e-3), f"{tag}: forward logits differ by {error}"
    if hasattr(reference, "disable_adapter"):  # the adapters matter, so a missed merge would be caught
        with torch.no_grad(), reference.disable_adapter():
            base_logits = reference(input_ids=ids, attention_mask=mask).logits
        assert (base_logits[real] - logits[real]).abs().max() > 1e-3, f"{tag}: LoRA made no difference"
    return logits


def check_sampling(model, reference, ids, mask, tp: int, tag: str) -> None:
    pad = reference.config.pad_token_id
    plain = merged(reference).eval()
    sample = dict(do_sample=True, top_p=0.9, temperature=0.8, max_new_tokens=6)
    torch.manual_seed(1234 + dist.get_rank())  # ranks' generators differ, as in a real run
    with generation_mode(model, inference_tp_size=tp) as policy:
        got = policy.generate(ids, mask, **sample)
    torch.manual_seed(1234 + dist.get_rank() * (tp == 1))  # a group follows its first rank's generator
    if tp == 1:
        expected = plain.generate(input_ids=ids, attention_mask=mask, **sample)
    else:  # the group (here: the world) generates the left-padded union of its prompts with rank 0's seed
        assert tp == dist.get_world_size()
        all_ids, all_mask, rows = _gather_rows(dist.group.WORLD, [ids, mask], [pad, 0], pad_left=True)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), device=ids.device)))
        expected = plain.generate(input_ids=all_ids, attention_mask=all_mask, **sample)
        expected = expected[rows, all_ids.shape[1] - ids.shape[1]:]
    assert same_tokens(got, expected, pad), f"{tag}: sampling differs\n{got}\n{expected}"


def optimizer_step(engine, reference, ref_opt) -> None:
    """One identical step on both: every rank uses the same batch, so ZeRO's averaged gradient is the local one."""
    batch = torch.randint(4, reference.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(7))
    batch = batch.to(DEVICE)
    batch_mask = torch.ones_like(batch)
    for model in (engine, reference):
        loss = model(input_ids=batch, attention_mask=batch_mask, labels=batch).loss
        if model is engine:
            engine.backward(loss)
            engine.step()
        else:
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad()


def partitioned_bytes(model: torch.nn.Module, name_part: str) -> int:
    """Full size of the ZeRO-3 parameters whose names contain ``name_part`` (what gathering them moves)."""
    return sum(p.ds_numel * p.element_size() for n, p in model.named_parameters() if name_part in n)


def same_as_fresh(model, replica: InferenceReplica, ids, mask, tag: str) -> None:
    """The refreshed replica holds exactly what a replica built and fully merged now holds (weights and logits)."""
    fresh = InferenceReplica(model, DEVICE, replica.tp_mesh, None, replica.gather_partition_size)
    fresh.refresh()
    local = lambda t: t.to_local() if hasattr(t, "to_local") else t  # noqa: E731
    kept, new = dict(replica.module.named_parameters()), dict(fresh.module.named_parameters())
    differ = [n for n in new if not torch.equal(local(kept[n]), local(new[n]))]
    assert not differ, f"{tag}: refreshed replica differs from a fresh one in {differ}"
    group = replica.tp_mesh.get_group() if replica.tp_mesh is not None else None
    logits = [GenerationReplica(r.module, GenerationStats(), group)(ids, mask).logits for r in (replica, fresh)]
    assert torch.equal(*logits), f"{tag}: refreshed replica's logits differ from a fresh one's"


def change_base_weight(engine, reference) -> None:
    """Add 0.05 to layer 0's frozen q_proj base weight in both models, as a checkpoint load would change it."""
    name = next(n for n, _ in engine.module.named_parameters() if ".layers.0.self_attn.q_proj.base_layer.weight" in n)
    param, ref = dict(engine.module.named_parameters())[name], dict(reference.named_parameters())[name]
    with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
        param.add_(0.05)
    with torch.no_grad():
        ref.add_(0.05)


def check_refresh_after_step(engine, reference, ids, mask, case: str, stats: GenerationStats, first: tuple) -> None:
    """After an optimizer step: LoRA gathers exactly its adapters' bytes (the frozen base stays out), full fine-tuning
    every group whole; either way the replica equals a fresh one. ``base``: a changed frozen weight under LoRA
    gathers and copies its group whole."""
    family, tp, lora, *flags = case.split(":")
    replica = _CACHE[engine.module].replica
    refreshed, gathered = stats.groups_refreshed - first[0], stats.bytes_gathered - first[2]
    if lora == "lora":  # every layer group (not the embeddings') refreshed from its adapters alone
        expected = (first[0] - 1, partitioned_bytes(engine.module, "lora_"), first[0] - 1)
    else:
        expected = (first[0], first[2], 0)
    assert (refreshed, gathered, stats.groups_adapters_only) == expected, \
        f"{case}: after the step {refreshed} groups / {gathered} bytes / {stats.groups_adapters_only} adapter-only " \
        f"refreshed, expected {expected}; first {first}"
    same_as_fresh(engine.module, replica, ids, mask, f"{case} after step")
    print(f"refresh {case}: first {first[0]} groups {first[2]} bytes, after step {refreshed} groups "
          f"{gathered} bytes ({stats.groups_adapters_only} adapter-only), unchanged entry 0 bytes", flush=True)
    if "base" in flags:
        before = (stats.groups_refreshed, stats.bytes_gathered, stats.groups_adapters_only)
        change_base_weight(engine, reference)
        check(engine.module, reference, ids, mask, int(tp), f"{case} after base change", stats)
        got = (stats.groups_refreshed - before[0], stats.bytes_gathered - before[1],
               stats.groups_adapters_only - before[2])
        assert got == (1, partitioned_bytes(engine.module, ".layers.0."), 0), \
            f"{case}: a changed base weight refreshed {got} (groups, bytes, adapter-only), not its layer whole"
        same_as_fresh(engine.module, replica, ids, mask, f"{case} after base change")


def run_case(case: str, paths: dict[str, Path]) -> None:
    family, tp, lora, *flags = case.split(":")
    tp, lora, tag = int(tp), lora == "lora", case
    model, reference, ref_opt = build(paths[family], family, lora)
    engine = zero_engine(model, stage=2 if "z2" in flags else 3)
    ids, mask = prompts(reference.config.vocab_size, reference.config.pad_token_id)
    stats = GenerationStats()
    before = gathered_weights(engine.module)
    linear = torch.nn.functional.linear  # ZeRO-3's process-wide replacement, bypassed inside the switch only
    logits = check(engine.module, reference, ids, mask, tp, tag, stats)
    after = gathered_weights(engine.module)
    assert all(torch.equal(before[n], after[n]) for n in before), f"{tag}: trained weights changed"
    assert torch.nn.functional.linear is linear, f"{tag}: F.linear not restored"
    assert stats.calls == 1 and stats.new_tokens > 0 and stats.gather_s > 0 and stats.tokens_per_s > 0, stats
    replica = _CACHE[engine.module].replica
    first = (stats.groups_refreshed, stats.groups_skipped, stats.bytes_gathered)
    if "refresh" in flags:  # a second entry without a step (a validation batch): nothing gathered or copied
        assert first[0] == len(replica.groups) and first[1] == 0 and first[2] > 0, f"{tag}: first refresh {stats}"
        with generation_mode(engine.module, inference_tp_size=tp, stats=stats, tp_gather_partition_size=1) as policy:
            again = policy(ids, mask).logits
        assert (stats.groups_refreshed, stats.groups_skipped, stats.bytes_gathered) == (first[0], first[0], first[2]), \
            f"{tag}: re-gathered without a change: {stats}"
        assert torch.equal(again, logits), f"{tag}: the skipped refresh changed the replica"
    if "sample" in flags:
        check_sampling(engine.module, reference, ids, mask, tp, tag)
    if "step" in flags:
        optimizer_step(engine, reference, ref_opt)
        new_logits = check(engine.module, reference, ids, mask, tp, f"{tag} after step", stats)
        assert (new_logits - logits).abs().max() > 1e-3, f"{tag}: the optimizer step did not reach the replica"
        assert _CACHE[engine.module].replica is replica, f"{tag}: replica rebuilt instead of refreshed"
        if "refresh" in flags:
            check_refresh_after_step(engine, reference, ids, mask, case, stats, first)
    with generation_mode(engine.module, inference_tp_size=tp, release_inference_cache=True):
        pass
    assert engine.module not in _CACHE, f"{tag}: release_inference_cache kept the replica"
    if dist.get_rank() == 0:
        print(f"ok {tag}: {stats}", flush=True)


def main() -> None:
    cases = sys.argv[1].split(",")
    paths = {Path(p).name.split("-")[0]: Path(p) for p in sys.argv[2:]}
    if DEVICE.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if DEVICE.type == "cpu":
        use_cpu_for_deepspeed()  # what HybridDeepSpeedStrategy does first on CPU (no unused shared-memory op build)
    deepspeed.init_distributed(dist_backend="gloo" if DEVICE.type == "cpu" else "nccl")
    for case in cases:
        start = time.perf_counter()
        run_case(case, paths)
        if dist.get_rank() == 0:
            print(f"case {case} took {time.perf_counter() - start:.1f}s", flush=True)
    dist.barrier()


if __name__ == "__main__":
    main()
