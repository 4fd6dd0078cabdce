"""The generation switch: hook-free (tensor-parallel) replicas generate exactly what the model would."""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lightning_rlhf.strategies.generation import GenerationStats, generation_mode, release_replica
from lightning_rlhf.strategies.tensor_parallel import replica_name
from lightning_rlhf.strategies.tp_plans import (
    KNOWN_STYLES,
    OUR_PLANS,
    FamilyTPPlan,
    check_divisible,
    layout_modules,
    resolve_tp_plan,
)
from tests.helpers.distributed import run_distributed, run_once
from tests.helpers.families import save_tiny_family, tiny_family_config

SCRIPTS = Path(__file__).parent / "scripts"
SIZES = dict(hidden_size=64, num_layers=2, num_heads=4)


def passed_cases(stdout: str) -> list[str]:
    """Cases the worker reported as passed, in order (its lines ``ok CASE: stats``)."""
    return re.findall(r"^ok (\S+):", stdout, flags=re.M)


def save_family(path: Path, family: str, tokenizer) -> Path:
    """A tiny BLOOM / GPT-J model (families the shared tiny factory does not build), saved like the others."""
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    sizes = {"bloom": dict(hidden_size=64, n_layer=2, n_head=4),
             "gptj": dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, tie_word_embeddings=False)}
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **sizes[family], **ids)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path




#: One family per transformers plan style (beyond llama's colwise/rowwise), generated with TP 2 under ZeRO-3.
STYLE_FAMILIES = {
    "qwen3": "replicated_with_grad_allreduce (q/k norms kept whole)",
    "olmo2": "colwise_gather_output + rowwise_split_input",
    "phi3": "colwise_gather_output on a fused qkv / gate_up projection",
    "granite_swa": "local_params + a bare 'sinks' parameter sliced per rank",
    "qwen3_moe": "moe_tp_experts + packed_colwise expert parameters (kept whole)",
    "llama4_text": "packed_rowwise experts (kept whole)",
    "deepseek_v2": "mla_kv_a_proj (kept whole)",
}


#: the cases of the three 2-rank tests below, run in one launch (``generation_runs``)
MATCH_CASES = [f"{family}:{tp}:{lora}" + (":step" if lora == "lora" else ":sample")
               for family in ("llama", "opt", "gpt2") for tp in (1, 2) for lora in ("plain", "lora")]
MATCH_CASES.append("llama:2:lora:step:z2")
REFRESH_CASES = ["llama:2:lora:step:refresh:base", "llama:1:lora:step:refresh", "llama:1:plain:step:refresh"]
STYLE_CASES = ["bloom:2:lora", "gptj:2:lora", "gpt_neox:2:lora"] + [f"{family}:2:plain" for family in STYLE_FAMILIES]


@pytest.fixture(scope="module")
def generation_runs(tiny_model_factory, tiny_tokenizer, tmp_path_factory) -> str:
    """The worker's output for every case of the three tests below, from one 2-process launch per session (the
    start-up of two DeepSpeed processes is paid once, not per test); each test checks that its own cases passed,
    in order."""
    def launch(root: Path) -> None:
        paths = [tiny_model_factory(family, **SIZES) for family in ("llama", "opt", "gpt2", "gpt_neox")]
        paths += [save_family(root / f"{family}-causal_lm", family, tiny_tokenizer) for family in ("bloom", "gptj")]
        paths += [save_tiny_family(root / f"{family}-causal_lm", family, tiny_tokenizer) for family in STYLE_FAMILIES]
        cases = STYLE_CASES + MATCH_CASES + REFRESH_CASES
        proc = run_distributed(SCRIPTS / "generation_worker.py", ",".join(cases), *paths, timeout=900)
        (root / "stdout.txt").write_text(proc.stdout)

    return (run_once(tmp_path_factory, "generation", launch) / "stdout.txt").read_text()


def _cases_passed(stdout: str, cases: list[str]) -> bool:
    return [case for case in passed_cases(stdout) if case in cases] == cases


@pytest.mark.distributed
def test_zero3_generation_matches_unsharded_copy(generation_runs):
    """Llama, OPT, GPT-2 under ZeRO-3 x TP 1/2 x LoRA or not: same greedy tokens and logits as a plain copy;
    trained weights untouched; after an optimizer step the replica follows (refreshed, not rebuilt); sampling
    draws what the plain copy draws (one seed per TP group); and once under ZeRO-2 (no gather)."""
    assert _cases_passed(generation_runs, MATCH_CASES), generation_runs


@pytest.mark.distributed
def test_replica_refresh_gathers_only_what_changed(generation_runs):
    """ZeRO-3, 2 ranks: an entry without an optimizer step gathers nothing; after a step every changed layer group
    is gathered again, and with LoRA the embeddings and head (no adapters) are not (counted in groups and bytes)."""
    assert _cases_passed(generation_runs, REFRESH_CASES), generation_runs
    print("\n".join(line for line in generation_runs.splitlines() if line.startswith("refresh ")))


@pytest.mark.slow
@pytest.mark.distributed
def test_tensor_parallel_plans_of_other_families(generation_runs):
    """Our BLOOM (ALiBi sliced per rank) and GPT-J plans, transformers' GPT-NeoX plan (embedding_rowwise) with
    LoRA, and one family per other style transformers plans use: TP 2 generates what a plain copy generates."""
    assert _cases_passed(generation_runs, STYLE_CASES), generation_runs


def test_every_shipped_tp_plan_translates():
    """Every family of the installed transformers that ships a ``base_model_tp_plan`` maps onto our styles.

    Styles are checked for all of them; where the family has a causal LM, its plan is also laid onto the model
    (built on ``meta`` with two layers, so no memory and little time): every split lands on a linear or embedding layer. A style added by a
    newer transformers fails here first (``scripts/test_latest.sh``) while users only get a warning.
    """
    from transformers import CONFIG_MAPPING

    laid, unknown = 0, {}
    for family, config_class in CONFIG_MAPPING.items():
        plan = getattr(config_class, "base_model_tp_plan", None)
        if not plan:
            continue
        unknown.update({f"{family}:{k}": v for k, v in plan.items() if v not in KNOWN_STYLES})
        config = config_class()
        for depth in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):  # the plan is per layer: two do
            if isinstance(getattr(config, depth, None), int) and getattr(config, depth) > 2:
                setattr(config, depth, 2)
        try:
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
        except Exception:  # noqa: BLE001 - a multimodal sub-config without a causal-LM class, or defaults that
            continue       # do not build alone; its styles were checked above
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layout = layout_modules(model, resolve_tp_plan(config), family)
        assert layout.splits or layout.kept_whole, family
        laid += 1
    assert not unknown, f"styles this lightning-rlhf does not know: {unknown}"
    assert laid >= 100, laid


def test_unknown_style_keeps_the_module_whole_with_one_warning(tiny_tokenizer):
    config = tiny_family_config("llama", tiny_tokenizer)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    plan = FamilyTPPlan({**config.base_model_tp_plan, "layers.*.mlp": "future_style"})
    with pytest.warns(UserWarning, match=r"'llama' module 'layers.\*.mlp' has style 'future_style'") as caught:
        layout = layout_modules(model, plan, "llama")
    assert len(caught) == 1, "one warning per family, module pattern and style, not one per layer"
    assert set(layout.kept_whole) == {"model.layers.0.mlp", "model.layers.1.mlp"}
    assert "model.layers.0.mlp.down_proj" not in layout.splits, "nothing is split inside a module kept whole"
    assert layout.splits["model.layers.0.self_attn.o_proj"].kind == "rowwise"
    with pytest.raises(ValueError, match="unsupported tensor-parallel styles .*future_style"):
        resolve_tp_plan(config, {"layers.*.mlp": "future_style"})  # the user's own plan: a typo fails


def left_padded_prompts(vocab: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, vocab, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, pad), mask


def test_single_process_lora_generation_and_forward(tiny_model_factory):
    """Without DeepSpeed: LoRA merged into the replica only; outputs equal the merged model's; sampling works."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model).merge_and_unload().eval()
    ids, mask = left_padded_prompts(base.config.vocab_size, base.config.pad_token_id)
    stats = GenerationStats()
    with generation_mode(model, stats=stats) as policy:
        got = policy.generate(ids, mask, max_new_tokens=5, do_sample=False)
        logits = policy(ids, mask).logits
        sampled = policy.generate(ids, mask, max_new_tokens=5, do_sample=True, temperature=0.7, top_p=0.9)
    expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(got, expected)
    assert torch.allclose(logits[mask.bool()], reference(input_ids=ids, attention_mask=mask).logits[mask.bool()],
                          atol=1e-5)
    assert sampled.shape[0] == 3 and torch.equal(sampled[:, :6], ids)
    assert model.training, "training mode must be restored"
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters()), "trained weights changed"
    assert stats.calls == 2 and stats.new_tokens > 0 and stats.tokens_per_s > 0
    release_replica(model)


def test_the_fast_backend_generates_the_merged_models_tokens_and_follows_a_weight_change(tiny_model_factory):
    """``backend="fast"``: greedy tokens of the LoRA-merged model; after the adapters change (as an optimizer step
    changes them) the kept replica is refreshed and the decoder's packed weights are made again, so the tokens
    follow the new weights."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, mask = left_padded_prompts(base.config.vocab_size, base.config.pad_token_id)
    ids = torch.cat([ids, ids + 1])
    mask = torch.cat([mask, mask])
    ends = dict(max_new_tokens=6, do_sample=False, eos_token_id=[base.config.eos_token_id],
                pad_token_id=base.config.pad_token_id)
    stats = GenerationStats()
    results = []
    for change in range(2):
        if change:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if "lora_B" in name:
                        param.add_(torch.randn_like(param))
        reference = copy.deepcopy(model).merge_and_unload().eval()
        expected = reference.generate(input_ids=ids, attention_mask=mask, **ends)
        with generation_mode(model, stats=stats, backend="fast", release_inference_cache=False) as policy:
            assert policy.decoder is not None
            results.append(policy.generate(ids, mask, **ends))
        assert torch.equal(results[-1], expected), f"after {change} adapter changes"
    assert not torch.equal(results[0], results[1]), "the change must change the greedy tokens for this test"
    assert stats.calls == 2 and stats.new_tokens > 0
    release_replica(model)


def test_switching_the_adapters_off_and_on_refreshes_a_kept_replica(tiny_model_factory):
    """``with actor.disable_adapter(): with generation_mode(actor)`` generated with the adapters: the replica's
    change check saw no weight change. The adapters' on/off state now counts as a change."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids, mask = left_padded_prompts(base.config.vocab_size, base.config.pad_token_id)
    real = mask.bool()

    def replica_logits():
        with generation_mode(model) as policy:
            return policy(ids, mask).logits[real]

    with torch.no_grad():
        with_adapters = model(input_ids=ids, attention_mask=mask).logits[real]
        with model.disable_adapter():
            without = model(input_ids=ids, attention_mask=mask).logits[real]
    assert not torch.allclose(with_adapters, without, atol=1e-4)
    assert torch.allclose(replica_logits(), with_adapters, atol=1e-5)
    with model.disable_adapter():
        assert torch.allclose(replica_logits(), without, atol=1e-5)
    assert torch.allclose(replica_logits(), with_adapters, atol=1e-5)  # back on
    release_replica(model)


def test_bf16_replica_merges_lora_in_float32_and_scores_like_the_unmerged_update(tiny_model_factory):
    """A bf16 replica holds ``bf16(W + B @ A * s)`` computed in float32 (one rounding), and the log-probs of what it
    samples agree with the unmerged bf16 forward of the update (the first PPO ratio) to bf16 rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import LogitsProcessorList

    from lightning_rlhf.models.sampling import StreamedLogprobs
    from lightning_rlhf.models.forward import policy_logprobs

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(base, config).to(torch.bfloat16).eval()
    ids, mask = left_padded_prompts(base.config.vocab_size, base.config.pad_token_id)
    stream = StreamedLogprobs()
    with generation_mode(model) as policy:
        replica = dict(policy.module.named_parameters())
        sequences = policy.generate(ids, mask, max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0,
                                    pad_token_id=base.config.pad_token_id,
                                    logits_processor=LogitsProcessorList([stream]))
    release_replica(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    want = (layer.base_layer.weight.float() + b @ a * layer.scaling["default"]).to(torch.bfloat16)
    assert replica["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16
    # a bf16 delta added in bf16 (two roundings) differed from this in 31% of the elements
    assert torch.equal(replica["model.layers.0.self_attn.q_proj.weight"], want)
    old, _ = stream.result(sequences[:, ids.shape[1]:])
    attention = torch.cat([mask, torch.ones_like(sequences[:, ids.shape[1]:])], dim=1)
    with torch.no_grad():
        new, _ = policy_logprobs(model, sequences, attention, sequences.shape[1] - ids.shape[1])
    ratio = torch.exp(new - old)
    assert ratio.sub(1).abs().max() < 2e-2, ratio  # bf16: merged vs unmerged arithmetic, one rounding of the weights


def test_replica_built_under_inference_mode_refreshes_outside_it(tiny_model_factory):
    """Lightning's ``validate`` runs under ``torch.inference_mode`` (its default); a replica first built there
    must still follow an optimizer step when ``fit`` refreshes it outside (no inference tensors in it)."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    ids, mask = left_padded_prompts(model.config.vocab_size, model.config.pad_token_id)
    with torch.inference_mode(), generation_mode(model) as policy:
        policy.generate(ids, mask, max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # stands in for an optimizer step
    with generation_mode(model) as policy:
        logits = policy(ids, mask).logits
        assert not any(p.is_inference() for p in policy.module.parameters())
    expected = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(logits[mask.bool()], expected[mask.bool()], atol=1e-5)
    release_replica(model)


def test_replica_names_strip_peft_wrappers():
    assert replica_name("model.layers.0.self_attn.q_proj.base_layer.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert replica_name("model.layers.0.self_attn.q_proj.lora_A.default.weight") is None
    assert replica_name("score.modules_to_save.default.weight") == "score.weight"
    assert replica_name("score.original_module.weight") is None
    assert replica_name("lm_head.weight") == "lm_head.weight"


def test_tp_plan_resolution_and_clear_errors(tiny_tokenizer):
    from lightning_rlhf.models.tiny import tiny_config

    assert resolve_tp_plan(tiny_config("llama", tiny_tokenizer)).styles["layers.*.self_attn.o_proj"] == "rowwise"
    assert resolve_tp_plan(tiny_config("opt", tiny_tokenizer)) is OUR_PLANS["opt"]
    with pytest.raises(ValueError, match="no tensor-parallel plan for model family 'gpt_neo'.*tp_plan="):
        resolve_tp_plan(AutoConfig.for_model("gpt_neo"))
    custom = resolve_tp_plan(AutoConfig.for_model("gpt_neo"), {"h.*.mlp.c_fc": "colwise", "h.*.mlp.c_proj": "rowwise"})
    assert custom.styles == {"h.*.mlp.c_fc": "colwise", "h.*.mlp.c_proj": "rowwise"}
    with pytest.raises(ValueError, match="unsupported tensor-parallel styles"):
        resolve_tp_plan(AutoConfig.for_model("gpt_neo"), {"h.*.mlp.c_fc": "diagonal"})
    assert resolve_tp_plan(AutoConfig.for_model("gpt_neox")).styles["embed_in"] == "embedding_rowwise"
    with pytest.raises(ValueError, match="num_attention_heads=4 is not divisible by inference_tp_size=3"):
        check_divisible(tiny_config("llama", tiny_tokenizer, hidden_size=48, num_heads=4), 3)


def test_bad_arguments_fail_clearly(tiny_model_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("gpt2", **SIZES))
    with pytest.raises(ValueError, match="inference_tp_size must be >= 1"):
        with generation_mode(model, inference_tp_size=0):
            pass
    with pytest.raises(ValueError, match="generation backend must be one of"):
        with generation_mode(model, backend="sglang"):
            pass
    with pytest.raises(RuntimeError, match="needs torch.distributed"):
        with generation_mode(model, inference_tp_size=2):
            pass
    with pytest.raises(ValueError, match="'fast' decodes on a full replica.*inference_tp_size must be 1"):
        with generation_mode(model, inference_tp_size=2, backend="fast"):
            pass
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA inference kernels.*generation_backend='native'"):
            with generation_mode(model, backend="deepspeed"):
                pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run benchmarks/gpu_smoke.sh on a GPU)")
@pytest.mark.parametrize("backend", ["native", "fast", "deepspeed"])
def test_cuda_generation_matches_plain_copy(tiny_model_factory, backend):
    """On CUDA (fp16), every backend generates what the plain model generates greedily (``fast``: the compiled
    static-cache step with CUDA graphs)."""
    from lightning_rlhf.strategies.deepspeed_inference import kernels_work_with_installed_transformers

    model = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES), dtype=torch.float16).cuda()
    ids, mask = left_padded_prompts(model.config.vocab_size, model.config.pad_token_id)
    ids, mask = ids.cuda(), mask.cuda()
    if backend == "deepspeed" and not kernels_work_with_installed_transformers():
        with pytest.raises(RuntimeError, match="does not work with transformers"):
            with generation_mode(model, backend=backend):
                pass
        return
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    with generation_mode(model, backend=backend, release_inference_cache=True) as policy:
        got = policy.generate(ids, mask, max_new_tokens=8, do_sample=False, eos_token_id=[model.config.eos_token_id],
                              pad_token_id=model.config.pad_token_id)
    expected = expected[:, : got.shape[1]]  # generate stops once every row has ended; so does the fast loop
    agree = (got[:, ids.shape[1]:] == expected[:, ids.shape[1]:]).float().mean().item()
    assert agree > (0.7 if backend == "deepspeed" else 0.99), (backend, got, expected)


@pytest.mark.gpu
@pytest.mark.distributed
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (run benchmarks/gpu_smoke.sh)")
def test_cuda_zero3_tensor_parallel(tiny_model_factory):
    """The CPU 2-rank checks, repeated on 2 GPUs with NCCL (GENERATION_DEVICE=cuda)."""
    paths = [tiny_model_factory(family, **SIZES) for family in ("llama", "opt", "gpt2")]
    cases = ["llama:2:lora:step", "opt:2:plain", "gpt2:2:lora"]
    proc = run_distributed(SCRIPTS / "generation_worker.py", ",".join(cases), *paths, env={"GENERATION_DEVICE": "cuda"})
    assert passed_cases(proc.stdout) == cases, proc.stdout


def test_by_default_only_a_lora_model_keeps_its_replica_through_training(tiny_model_factory):
    """``release_inference_cache=None`` (the strategy's default) keeps every replica on exit, so validation batches
    between two steps share one; before a backward the strategy frees the replicas of fully fine-tuned models
    (refilled whole after every step anyway) and keeps a LoRA model's, whose refresh gathers only the adapters."""
    from peft import LoraConfig, get_peft_model

    from lightning_rlhf.strategies.generation import _CACHE, keeps_replica_by_default, release_idle_replicas

    for other in list(_CACHE):  # replicas an earlier test in this process kept would be counted too
        release_replica(other)
    full = AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES))
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_factory("llama", **SIZES)),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert not keeps_replica_by_default(full) and keeps_replica_by_default(lora)
    replicas = []
    for model in (full, lora, full):
        with generation_mode(model, release_inference_cache=None) as policy:
            replicas.append(policy)
        assert model in _CACHE
    assert replicas[0].module is replicas[2].module  # the second entry reused the kept replica
    assert release_idle_replicas() == 1
    assert full not in _CACHE and lora in _CACHE
    release_replica(lora)
    with generation_mode(full, release_inference_cache=True):
        pass
    assert full not in _CACHE
