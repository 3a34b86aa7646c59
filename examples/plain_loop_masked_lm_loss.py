"""``fastmask.MaskedLMLoss`` in a plain PyTorch loop: a drop-in for
``nn.CrossEntropyLoss(ignore_index=-100)`` that skips unlabelled rows, with masks from
``fastmask.mask_tokens`` (C++ on CPU, Triton on CUDA).

    python examples/plain_loop_masked_lm_loss.py --steps 30
"""

import argparse

import torch
from torch import nn

import fastmask
from fastmask.data import corpus_texts, default_tokenizer, tokenized_rows


class TinyEncoder(nn.Module):
    """Embeddings + a 2-layer Transformer encoder + a vocabulary projection."""

    def __init__(self, vocab_size: int, hidden: int = 64, length: int = 128):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, hidden)
        self.position = nn.Parameter(torch.zeros(length, hidden))
        layer = nn.TransformerEncoderLayer(hidden, nhead=2, dim_feedforward=4 * hidden, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, input_ids):
        hidden = self.encoder(self.embed(input_ids) + self.position[: input_ids.shape[1]])
        return self.head(hidden)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    tokenizer = default_tokenizer()
    rows = torch.tensor(tokenized_rows(tokenizer, corpus_texts(max_chars=200_000), 128))
    special = torch.isin(rows, torch.tensor(tokenizer.all_special_ids))
    model = TinyEncoder(len(tokenizer))
    loss_fn = fastmask.MaskedLMLoss()  # was: nn.CrossEntropyLoss(ignore_index=-100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for step in range(args.steps):
        index = torch.arange(step * 16, step * 16 + 16) % rows.shape[0]
        input_ids, labels = fastmask.mask_tokens(
            rows[index],
            mask_token_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_tokens_mask=special[index],
            seed=0,
            row_keys=index,  # a row's mask follows its index
        )
        logits = model(input_ids)
        loss = loss_fn(logits.view(-1, logits.shape[-1]), labels.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.3f}")
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return losses


if __name__ == "__main__":
    main()
