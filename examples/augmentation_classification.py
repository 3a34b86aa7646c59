"""Masking as augmentation when fine-tuning a sequence classifier:
``fastmask.DataCollatorForMaskedAugmentation`` pads like ``DataCollatorWithPadding``, keeps the
task labels, and corrupts training inputs (mask / random replace / delete); it is off in eval
mode. The toy task: does a stdlib docstring paragraph mention "file"?

    python examples/augmentation_classification.py --epochs 1
"""

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification

from fastmask import DataCollatorForMaskedAugmentation
from fastmask.data import corpus_texts, default_tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--examples", type=int, default=512)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    tokenizer = default_tokenizer()
    texts = corpus_texts()[: args.examples]
    labels = [int("file" in t.lower()) for t in texts]
    encoded = tokenizer([t.replace("file", "document") for t in texts], truncation=True, max_length=96)
    features = [{"input_ids": ids, "labels": label} for ids, label in zip(encoded["input_ids"], labels)]
    split = int(0.8 * len(features))
    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            num_labels=2,
        )
    )
    collator = DataCollatorForMaskedAugmentation(
        tokenizer, mask_probability=0.1, random_replace_probability=0.05, delete_probability=0.05, seed=0
    )
    train = torch.utils.data.DataLoader(features[:split], batch_size=32, shuffle=True, collate_fn=collator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for epoch in range(args.epochs):
        collator.train()
        model.train()
        for batch in train:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        collator.eval()  # no corruption at evaluation
        model.eval()
        with torch.no_grad():
            batch = collator(features[split:])
            accuracy = (
                (model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1) == batch["labels"])
                .float()
                .mean()
            )
        print(f"epoch {epoch}: last training loss {loss.item():.3f}, held-out accuracy {accuracy:.3f}")
    return float(accuracy)


if __name__ == "__main__":
    main()
