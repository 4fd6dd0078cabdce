"""``RLHFDataModule``: one LightningDataModule feeding SFT, reward modelling and the online steps.

Records are read, validated, split between the steps, tokenized (cached by ``datasets``) and collated. Lightning's
distributed sampler shards the train and val loaders; :meth:`ptx_dataloader`, unseen by Lightning, shards itself."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, DistributedSampler
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lightning_rlhf.data.collate import COLLATORS
from lightning_rlhf.data.records import OnBadRecord
from lightning_rlhf.data.resumable import DataPosition, ResumableDataLoader
from lightning_rlhf.data.sources import SourceReport, load_records
from lightning_rlhf.data.split import STAGES, split_indices
from lightning_rlhf.data.task import SyntheticTask
from lightning_rlhf.data.tool_schemas import tool_schemas_json
from lightning_rlhf.data.tokenization import (
    ENCODING_VERSION,
    Encoder,
    LongPromptPolicy,
    Stage,
    TokenizeSettings,
    encode_batch,
)
from lightning_rlhf.models.loading import TOKENIZER_FILES, check_local_folder

TASK_SOURCE = "<synthetic task>"
#: record fields kept beside the token ids: ``columns`` holds a prompt-only record's reference columns (JSON)
_KEEP_COLUMNS = {"prompt", "source", "record", "columns"}


class RLHFDataModule(LightningDataModule):
    """Data for one RLHF step (``sft``, ``reward`` or ``rl``), split deterministically between the steps.

    Args:
        tokenizer: a tokenizer, or a local folder loaded with ``AutoTokenizer.from_pretrained``.
        stage: the step to feed: ``sft`` (prompt + demonstration), ``reward`` (chosen/rejected pairs) or ``rl``
            (left-padded prompts for PPO and GRPO); ``ppo`` is the deprecated name of ``rl``.
        sources: data files (json, jsonl, jsonl.gz, parquet, csv), ``save_to_disk`` folders, hub names or
            ``reasoning_gym:TASK?key=value&...`` tasks, concatenated; ``None`` uses the built-in synthetic task.
        format: every source's adapter (``pairs``, ``rm_static``, ``hh_rlhf``, ``sft``, a registered one) or ``auto``.
        split: ratios of each source given to sft, reward and rl, e.g. ``"2,4,4"`` (20/40/40%).
        eval_fraction: share of each step's part held out for validation.
        seed: seed of the split (and of the built-in task unless ``task`` is given).
        task: the built-in task to use when ``sources`` is ``None`` (default: addition with ``seed``).
        task_size: number of built-in task records when ``sources`` is ``None``.
        max_prompt_length: longest prompt in tokens.
        max_length: longest prompt + response in tokens.
        long_prompt_policy: ``drop`` or left-``truncate`` prompts over ``max_prompt_length``;
            the count is logged either way.
        add_eos: end responses with the tokenizer's EOS token (DeepSpeed-Chat's ``--add_eot_token``).
        use_chat_template: use the tokenizer's chat template for prompts if it has one (else ``Human: ... Assistant:``).
        on_bad_record: ``error`` stops at the first bad record (file, number, field); ``skip`` drops and counts them.
        batch_size: training batch size per rank.
        eval_batch_size: validation batch size per rank (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        cache_dir: where tokenized data is cached (default: the ``datasets`` cache).
        tools: tool functions by import path whose JSON schemas the chat template renders into every prompt
            (``apply_chat_template(tools=)``), for episodes with ``protocol: chat_template``; the template must
            render them (None: no tools in the prompt).
    """

    def __init__(
        self,
        tokenizer: str | PreTrainedTokenizerBase,
        stage: Literal["sft", "reward", "rl", "ppo"] = "sft",
        sources: list[str] | None = None,
        format: str = "auto",
        split: str = "2,4,4",
        eval_fraction: float = 0.05,
        seed: int = 0,
        task: SyntheticTask | None = None,
        task_size: int = 10000,
        max_prompt_length: int = 256,
        max_length: int = 512,
        long_prompt_policy: LongPromptPolicy = "drop",
        add_eos: bool = True,
        use_chat_template: bool = True,
        on_bad_record: OnBadRecord = "error",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        tools: list[str] | None = None,
    ) -> None:
        super().__init__()
        if stage == "ppo":
            rank_zero_warn("RLHFDataModule(stage='ppo') is deprecated and will be removed in the next release; use "
                           "stage='rl' (the prompt batches of PPO and GRPO)", category=FutureWarning)
            stage = "rl"
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        if sources is not None and not sources:
            raise ValueError("sources is empty; pass None to use the built-in synthetic task")
        split_indices(10, split, seed, eval_fraction)  # validates split and eval_fraction now
        self.save_hyperparameters(ignore=["tokenizer", "task"])
        self.hparams.stage = self.stage = stage
        self.sources = list(sources) if sources is not None else None
        self.settings = TokenizeSettings(max_prompt_length, max_length, long_prompt_policy, add_eos, use_chat_template,
                                         tool_schemas_json(tools))
        self._tokenizer_arg = tokenizer
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._task = task
        self.datasets: dict[str, Any] = {}
        self.report: dict[str, Any] = {}
        self.train_position = DataPosition()

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (loaded from its folder on first use)."""
        if self._tokenizer is None:
            arg = self._tokenizer_arg
            local = isinstance(arg, (str, Path))
            if local:
                check_local_folder(arg, "tokenizer", TOKENIZER_FILES, "data.tokenizer (or model.tokenizer)")
            self._tokenizer = AutoTokenizer.from_pretrained(arg, local_files_only=True) if local else arg
        return self._tokenizer

    @property
    def task(self) -> SyntheticTask | None:
        """The built-in task (with its checker) when it is the data source, else ``task`` if given."""
        if self._task is None and self.sources is None:
            self._task = SyntheticTask(seed=self.hparams.seed)
        return self._task

    @property
    def pad_id(self) -> int:
        """Pad token id used by the collators (EOS when the tokenizer has no pad token)."""
        if self.tokenizer.pad_token_id is not None:
            return self.tokenizer.pad_token_id
        rank_zero_warn("the tokenizer has no pad token; padding with EOS (masks still exclude padding)")
        return self.tokenizer.eos_token_id

    def prepare_data(self) -> None:
        """Read, split and tokenize once on the main process, so the other ranks load the cache."""
        if not self.datasets:
            self._build()

    def setup(self, stage: str | None = None) -> None:
        """Build this step's ``train`` and ``eval`` datasets (from the cache when present)."""
        if not self.datasets:
            self._build()

    def load_records(self) -> tuple[list[list[dict[str, Any]]], list[SourceReport]]:
        """Read and validate every source; returns records and a report per source."""
        if self.sources is None:
            records = [{**r, "source": TASK_SOURCE, "record": i} for i, r in
                       enumerate(self.task.records(self.hparams.task_size), start=1)]  # type: ignore[union-attr]
            return [records], [SourceReport(TASK_SOURCE, "task", len(records), len(records))]
        loaded = [load_records(s, self.hparams.format, self.hparams.on_bad_record, self.hparams.cache_dir)
                  for s in self.sources]
        return [records for records, _ in loaded], [report for _, report in loaded]

    def split_records(self, per_source: list[list[dict[str, Any]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Split each source's records between the steps and concatenate: ``{stage: {part: records}}``."""
        out: dict[str, dict[str, list]] = {s: {"train": [], "eval": []} for s in STAGES}
        for index, records in enumerate(per_source):
            split = self.hparams.split
            if records and all(r.get("response") is None and r.get("chosen") is None for r in records):
                split = "0,0,1"  # prompt-only records teach SFT and the reward model nothing: all go to "rl"
                source = self.sources[index] if self.sources else TASK_SOURCE
                rank_zero_info(f"[data] {source} holds prompt-only records: all {len(records)} go to the rl stage "
                               f"(split {self.hparams.split!r} applies to sources with responses)")
            parts = split_indices(len(records), split, self.hparams.seed, self.hparams.eval_fraction,
                                  source_index=index)
            for stage, by_part in parts.items():
                for part, indices in by_part.items():
                    out[stage][part].extend(records[i] for i in indices)
        return out

    def _build(self) -> None:
        per_source, reports = self.load_records()
        parts = self.split_records(per_source)
        self.report = {"sources": reports, "split": {s: {p: len(r) for p, r in v.items()} for s, v in parts.items()},
                       "tokenized": {}}
        for report in reports:
            rank_zero_info(f"[data] {report.source} ({report.format}): {report.rows} rows, {report.kept} kept, "
                           f"dropped {report.dropped or 'none'}")
        wanted = {"train": (self.stage, "train"), "eval": (self.stage, "eval")}
        if self.stage == "rl":
            wanted["ptx"] = ("sft", "train")
        for name, (stage, part) in wanted.items():
            self.datasets[name] = self._tokenize(parts[stage][part], stage, name)  # type: ignore[arg-type]
        self._check_not_empty()

    def _check_not_empty(self) -> None:
        where = "the built-in task" if self.sources is None else ", ".join(self.sources)
        counts = f"split {self.hparams.split!r} gave {self.stage} {self.report['split'][self.stage]}, kept after " \
                 f"tokenizing {self.report['tokenized']}"
        if len(self.datasets["train"]) == 0:
            raise ValueError(f"no {self.stage} training records from {where} ({counts}); check that the files hold "
                             f"records for this step, the split ratios and the length limits")
        if len(self.datasets["eval"]) == 0 and self.hparams.eval_fraction > 0:
            rank_zero_warn(f"[data] the {self.stage} eval split from {where} is empty ({counts}); validation will "
                           f"not run: raise eval_fraction, add records, or fix the dropped ones")

    def _tokenize(self, records: list[dict[str, Any]], stage: Stage, name: str) -> Any:
        import datasets
        from datasets.fingerprint import Hasher

        encoder = Encoder(self.tokenizer, self.settings)
        if not records:
            self.report["tokenized"][name] = {"kept": 0, "dropped": {}, "truncated": 0}
            return []
        table = datasets.Dataset.from_list(records)
        key = Hasher.hash([table._fingerprint, stage, self.settings, Hasher.hash(self.tokenizer), ENCODING_VERSION])
        cache = Path(self.hparams.cache_dir or datasets.config.HF_DATASETS_CACHE) / "lightning_rlhf"
        cache.mkdir(parents=True, exist_ok=True)
        encoded = table.map(
            encode_batch, batched=True, fn_kwargs={"encoder": encoder, "stage": stage},
            remove_columns=[c for c in table.column_names if c not in _KEEP_COLUMNS],
            cache_file_name=str(cache / f"{stage}-{key}.arrow"), new_fingerprint=key,
            desc=f"Tokenizing {stage} ({name})",
        )
        dropped = Counter(r for r in encoded["drop_reason"] if r)
        truncated = sum(encoded["truncated"])
        kept = encoded.filter(lambda r: [not x for x in r], input_columns="drop_reason", batched=True,
                              cache_file_name=str(cache / f"{stage}-{key}-kept.arrow"), desc="Dropping")
        self.report["tokenized"][name] = {"kept": len(kept), "dropped": dict(dropped), "truncated": truncated}
        cut = f", {truncated} prompts left-truncated to max_prompt_length" if truncated else ""
        rank_zero_info(f"[data] {stage} {name}: {len(kept)} kept, dropped {dict(dropped) or 'none'}{cut}")
        return kept.remove_columns("truncated")

    def _loader(self, name: str, batch_size: int, shuffle: bool, stage: str, sampler: Any = None,
                loader_class: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        if name not in self.datasets:
            self.setup()
        return loader_class(
            self.datasets[name], batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
            collate_fn=COLLATORS[stage](self.pad_id), num_workers=self.hparams.num_workers,
            generator=torch.Generator().manual_seed(self.hparams.seed) if shuffle and sampler is None else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Training batches; a run resumed mid-epoch goes on with the next batch instead of replaying the epoch."""
        return self._loader("train", self.hparams.batch_size, True, self.stage, loader_class=ResumableDataLoader,
                            position=self.train_position, epoch_length=self._training_batches_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The training loader's place in its epoch (Lightning stores it in every checkpoint)."""
        return {"train_position": self.train_position.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train_position.load_state_dict(state_dict.get("train_position", {}))

    def _training_batches_per_epoch(self) -> float:
        trainer = self.trainer
        return trainer.num_training_batches if trainer is not None else float("inf")

    def val_dataloader(self) -> DataLoader:
        """Held-out batches of this step (for PPO: held-out prompts)."""
        return self._loader("eval", self.hparams.eval_batch_size or self.hparams.batch_size, False, self.stage)

    def ptx_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """SFT batches for PPO's pretraining (ptx) loss, sharded across ranks here (``batch_size`` per rank)."""
        if self.stage != "rl":
            raise RuntimeError(f"ptx_dataloader is for stage 'rl'; this data module is for {self.stage!r}")
        if "ptx" not in self.datasets:
            self.setup()
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(self.datasets["ptx"], shuffle=True, seed=self.hparams.seed)
        return self._loader("ptx", batch_size or self.hparams.batch_size, True, "sft", sampler=sampler)


def reshuffled_passes(loader: DataLoader) -> Iterator[Any]:
    """Batches of ``loader`` without end, each pass in a new order (unlike ``itertools.cycle``), one batch held."""
    epoch = 0
    while True:
        set_epoch = getattr(loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("reshuffled_passes: the data loader yields no batch (is its data set empty?)")
        epoch += 1


class PreferenceDataModule(RLHFDataModule):
    """Deprecated name of :class:`RLHFDataModule` (it feeds every step, not only preference pairs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        rank_zero_warn("PreferenceDataModule is deprecated and will be removed in the next release; use "
                       "RLHFDataModule", category=FutureWarning)
        super().__init__(*args, **kwargs)
