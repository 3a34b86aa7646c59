"""Static (pre-computed) masking of a whole ``datasets.Dataset`` with
``.map(batched=True, num_proc=N)``: masks are keyed by example index, so the result is the same
whatever ``num_proc``, batch size or order — and the same as masking on the fly with
``row_keys`` set to the index.

    python examples/static_masking_datasets.py --num-proc 2
"""

import argparse

import torch

import fastmask
from fastmask.data import corpus_texts, default_tokenizer, tokenized_rows


def mask_batch(batch, indices, *, mask_token_id, vocab_size, special_ids, seed):
    ids = torch.tensor(batch["input_ids"])
    masked, labels = fastmask.mask_tokens(
        ids,
        mask_token_id=mask_token_id,
        vocab_size=vocab_size,
        special_token_ids=special_ids,
        seed=seed,
        row_keys=indices,
    )
    return {"input_ids": masked.tolist(), "labels": labels.tolist()}


def main(argv=None):
    import datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = default_tokenizer()
    rows = tokenized_rows(tokenizer, corpus_texts(max_chars=200_000), 128)
    dataset = datasets.Dataset.from_dict({"input_ids": rows})
    kwargs = dict(
        mask_token_id=tokenizer.mask_token_id,
        vocab_size=len(tokenizer),
        special_ids=tuple(tokenizer.all_special_ids),
        seed=args.seed,
    )
    parallel = dataset.map(
        mask_batch, batched=True, batch_size=64, with_indices=True, num_proc=args.num_proc, fn_kwargs=kwargs
    )
    serial = dataset.map(mask_batch, batched=True, batch_size=17, with_indices=True, fn_kwargs=kwargs)
    same = parallel["labels"] == serial["labels"] and parallel["input_ids"] == serial["input_ids"]
    masked = sum(label != -100 for row in parallel["labels"] for label in row)
    total = sum(len(row) for row in parallel["labels"])
    print(
        f"{len(parallel)} rows masked with num_proc={args.num_proc}: {masked / total:.3%} of tokens selected; "
        f"identical to a serial map with another batch size: {same}"
    )
    return same


if __name__ == "__main__":
    main()
