"""fastmask: fast masked-language-model data preparation and masked-position loss.

Public names are imported lazily, so ``import fastmask`` stays light (transformers is only
imported when a collator or integration is first used).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # masking engine
    "mask_tokens": "fastmask.masking",
    "word_start_table": "fastmask.words",
    "word_starts_from_offsets": "fastmask.words",
    "word_starts_from_word_ids": "fastmask.words",
    "detect_word_boundary_scheme": "fastmask.words",
    # PMI n-gram masking
    "build_ngram_vocabulary": "fastmask.ngrams",
    "NgramVocabulary": "fastmask.ngrams",
    "ngram_unit_ids": "fastmask.ngrams",
    # seq2seq noise
    "span_corruption": "fastmask.sentinel_spans",
    "span_corruption_lengths": "fastmask.sentinel_spans",
    "DataCollatorForSpanCorruption": "fastmask.seq2seq",
    "text_infilling": "fastmask.infilling",
    "DataCollatorForTextInfilling": "fastmask.infilling_collator",
    "DataCollatorForSeq2Seq": "fastmask.source_noise",
    # loss
    "masked_cross_entropy": "fastmask.cross_entropy",
    "MaskedLMLoss": "fastmask.loss",
    "fused_masked_lm_loss": "fastmask.fused_linear_cross_entropy",
    "release_cached_buffers": "fastmask.cross_entropy",
    "apply_fastmask": "fastmask.integrations.transformers",
    "unapply_fastmask": "fastmask.integrations.transformers",
    "fastmask_patched": "fastmask.integrations.transformers",
    "is_fastmask_applied": "fastmask.integrations.transformers",
    # collators
    "DataCollatorForLanguageModeling": "fastmask.collator",
    "DataCollatorForWholeWordMask": "fastmask.collator",
    "DataCollatorForMaskedAugmentation": "fastmask.collator",
    "DataCollatorForCompletionOnlyLM": "fastmask.completion_collator",
    "completion_mask": "fastmask.completion_labels",
    "count_token_frequencies": "fastmask.token_weights",
    "token_weights_from_counts": "fastmask.token_weights",
    "MaskingSchedule": "fastmask.schedules",
    "MaskingScheduleCallback": "fastmask.schedules",
    # adaptive masking (issue 11)
    "TokenLossTracker": "fastmask.token_loss_tracker",
    "frequency_buckets": "fastmask.token_loss_tracker",
    "AdaptiveRate": "fastmask.adaptive_rate",
    "AdaptiveMaskingCallback": "fastmask.adaptive_callback",
    "LossFeedback": "fastmask.loss_feedback",
    "set_loss_feedback": "fastmask.integrations.transformers",
    # misc
    "BackendUnavailableError": "fastmask._backend",
    "availability": "fastmask.info",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name):
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'fastmask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
