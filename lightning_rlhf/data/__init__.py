"""The shared data layer: record formats, adapters, stage splits, tokenization, collators,
``RLHFDataModule`` and the built-in synthetic task."""

from lightning_rlhf.data.adapters import Adapter, available_formats, get_adapter, register_adapter, split_dialogue
from lightning_rlhf.data.collate import IGNORE_INDEX, PromptCollator, RewardCollator, SFTCollator, pad
from lightning_rlhf.data.datamodule import PreferenceDataModule, RLHFDataModule
from lightning_rlhf.data.records import DropCounter, FieldError, RecordError, require_text
from lightning_rlhf.data.sources import SourceReport, load_records
from lightning_rlhf.data.split import parse_ratios, split_indices
from lightning_rlhf.data.task import SyntheticTask, default_task
from lightning_rlhf.data.tokenization import Encoder, TokenizeSettings, dialogue_messages

__all__ = [
    "IGNORE_INDEX",
    "Adapter",
    "DropCounter",
    "Encoder",
    "FieldError",
    "PromptCollator",
    "PreferenceDataModule",
    "RLHFDataModule",
    "RecordError",
    "RewardCollator",
    "SFTCollator",
    "SourceReport",
    "SyntheticTask",
    "TokenizeSettings",
    "available_formats",
    "default_task",
    "dialogue_messages",
    "get_adapter",
    "load_records",
    "pad",
    "parse_ratios",
    "register_adapter",
    "require_text",
    "split_dialogue",
    "split_indices",
]
