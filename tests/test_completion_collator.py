"""DataCollatorForCompletionOnlyLM: TRL's former test cases (single / multi-turn, template at the
row start, template tokenised differently in context), ragged and packed batches, backends,
assistant_masks, decoder-input noise, bad input; a packed batch trains like the unpacked one on a
tiny Llama."""

from __future__ import annotations

import copy
import warnings

import pytest
import text_fixtures
import torch
from backends import require_backend

from fastmask import DataCollatorForCompletionOnlyLM, apply_fastmask

IGNORE = -100


@pytest.fixture(scope="module")
def tok():
    return text_fixtures.tokenizer("bpe")


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def kept_text(tok, ids, labels):
    return tok.decode([i for i, l in zip(ids.tolist(), labels.tolist()) if l != IGNORE])


def test_single_turn_masks_up_to_the_response_template(tok):
    text = "### Human: Hello all this should be masked\n### Assistant: I should not be masked."
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok)
    batch = collator([{"input_ids": encode(tok, text)}])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    template = collator.response_token_ids
    start = next(p for p in range(len(ids)) if ids[p : p + len(template)].tolist() == template)
    assert (labels[: start + len(template)] == IGNORE).all()
    assert torch.equal(labels[start + len(template) :], ids[start + len(template) :])
    assert "should not be masked" in kept_text(tok, ids, labels)
    assert set(batch) >= {"input_ids", "attention_mask", "labels"}


def test_template_at_row_start_and_token_id_templates(tok):
    text = "### Assistant: I should not be masked."
    ids_template = encode(tok, "### Assistant:")
    for template in ("### Assistant:", ids_template, torch.tensor(ids_template)):
        batch = DataCollatorForCompletionOnlyLM(template, tokenizer=tok)([encode(tok, text)])
        labels = batch["labels"][0]
        assert (labels[: len(ids_template)] == IGNORE).all()
        assert (labels[len(ids_template) :] != IGNORE).all()


def test_only_the_first_response_is_trained_without_an_instruction_template(tok):
    text = "### Q: a\n### A: first answer\n### Q: b\n### A: second answer"
    batch = DataCollatorForCompletionOnlyLM("### A:", tokenizer=tok)([encode(tok, text)])
    kept = kept_text(tok, batch["input_ids"][0], batch["labels"][0])
    assert kept.strip().startswith("first answer") and "second answer" in kept  # everything after the first


def test_multi_turn_keeps_only_the_answers(tok):
    text = (
        "### Human: question one\n### Assistant: answer one\n### Human: question two\n"
        "### Assistant: answer two\n### Human: question three"
    )
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok, instruction_template="### Human:")
    batch = collator([encode(tok, text)])
    kept = kept_text(tok, batch["input_ids"][0], batch["labels"][0])
    assert "answer one" in kept and "answer two" in kept
    assert "question" not in kept and "Human" not in kept


def test_template_tokenised_differently_in_context(tok):
    """The template's ids alone differ from its ids in context: a string template is then not found
    (warning, row ignored), the ids taken from context match (TRL's documented workaround)."""
    context = "Question: what?\nAnswer: yes it is"
    alone = encode(tok, " Answer:")
    in_context = encode(tok, "\nAnswer:")[1:] if encode(tok, "\nAnswer:")[0] == encode(tok, "\n")[0] else None
    row = encode(tok, context)
    if in_context is None or alone == in_context or _find(row, alone) is not None:
        pytest.skip("this tokenizer encodes the template identically in context")
    with pytest.warns(UserWarning, match="Could not find response key"):
        batch = DataCollatorForCompletionOnlyLM(" Answer:", tokenizer=tok)([row])
    assert (batch["labels"] == IGNORE).all()
    batch = DataCollatorForCompletionOnlyLM(in_context, tokenizer=tok)([row])
    assert kept_text(tok, batch["input_ids"][0], batch["labels"][0]).strip() == "yes it is"


def _find(row, template):
    return next((p for p in range(len(row) - len(template) + 1) if row[p : p + len(template)] == template), None)


def test_missing_templates_warn_and_ignore_the_row(tok):
    rows = [encode(tok, "### Assistant: kept"), encode(tok, "no template here at all")]
    with pytest.warns(UserWarning, match="Could not find response key") as record:
        batch = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok)(rows)
    assert len([w for w in record if "Could not find" in str(w.message)]) == 1
    assert (batch["labels"][1] == IGNORE).all() and (batch["labels"][0] != IGNORE).any()
    with pytest.warns(UserWarning, match="Could not find instruction key"):
        DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok, instruction_template="### Human:")(rows[:1])


def test_bad_input(tok):
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM("", tokenizer=tok)
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM([], tokenizer=tok)
    with pytest.raises(ValueError, match="empty"):
        DataCollatorForCompletionOnlyLM("### A:", tokenizer=tok, instruction_template="")
    with pytest.raises(TypeError, match="tokenizer"):
        DataCollatorForCompletionOnlyLM("### A:", "### H:")
    with pytest.raises(ValueError, match="mlm"):
        DataCollatorForCompletionOnlyLM("### A:", tokenizer=tok, mlm=True)
    with pytest.raises(ValueError, match="assistant_masks"):
        DataCollatorForCompletionOnlyLM(None, tokenizer=tok)([encode(tok, "hi")])


def test_ragged_batch_pads_and_ignores_padding(tok):
    rows = [encode(tok, "### Assistant: a long answer with many words in it"), encode(tok, "### Assistant: short")]
    batch = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["labels"][pad] == IGNORE).all()
    assert (batch["input_ids"][pad] == tok.pad_token_id).all()


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton"])
def test_backends_give_identical_batches(tok, backend):
    require_backend(backend)
    rows = [
        encode(tok, t)
        for t in (
            "### Human: q\n### Assistant: a\n### Human: q2\n### Assistant: a2",
            "### Assistant: only",
            "x ### Human: q ### Assistant: z ### Human: tail",
        )
    ]
    kwargs = dict(tokenizer=tok, instruction_template="### Human:")
    with warnings.catch_warnings():  # rows 1 and 2 miss a template (" ###" tokenises differently): warned
        warnings.simplefilter("ignore")
        expected = DataCollatorForCompletionOnlyLM("### Assistant:", backend="reference", **kwargs)(rows)
        got = DataCollatorForCompletionOnlyLM("### Assistant:", backend=backend, **kwargs)(rows)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_padding_free_flattens_like_data_collator_with_flattening(tok):
    rows = [encode(tok, "### Assistant: one two three"), encode(tok, "q\n### Assistant: four")]
    padded = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok)(rows)
    packed = DataCollatorForCompletionOnlyLM(
        "### Assistant:", tokenizer=tok, padding_free=True, return_flash_attn_kwargs=True
    )(rows)
    lengths = [len(r) for r in rows]
    assert "attention_mask" not in packed
    assert packed["input_ids"].shape == (1, sum(lengths))
    assert packed["input_ids"][0].tolist() == rows[0] + rows[1]
    assert packed["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[1]))
    expected = torch.cat([padded["labels"][i, :n] for i, n in enumerate(lengths)])
    expected[[0, lengths[0]]] = IGNORE  # first label of each example
    assert torch.equal(packed["labels"][0], expected)
    assert packed["cu_seq_lens_q"].tolist() == [0, lengths[0], sum(lengths)]
    assert packed["cu_seq_lens_q"].dtype == torch.int32 and packed["max_length_k"] == max(lengths)
    transformers = pytest.importorskip("transformers")
    stock = transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": r, "labels": padded["labels"][i, : len(r)].tolist()} for i, r in enumerate(rows)]
    )
    for key in ("input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k"):
        assert torch.equal(torch.as_tensor(stock[key]).long(), packed[key].long()), key
    assert stock["max_length_q"] == packed["max_length_q"]


def test_assistant_masks_are_the_label_mask(tok):
    ids = encode(tok, "user says hi assistant says hello")
    mask = [0] * 3 + [1] * (len(ids) - 3)
    collator = DataCollatorForCompletionOnlyLM(None, tokenizer=tok)
    batch = collator([{"input_ids": ids, "assistant_masks": mask}, {"input_ids": ids[:4], "assistant_masks": mask[:4]}])
    assert "assistant_masks" not in batch
    assert batch["labels"][0].tolist() == [IGNORE] * 3 + ids[3:]
    assert batch["labels"][1].tolist() == [IGNORE] * 3 + [ids[3]] + [IGNORE] * (len(ids) - 4)


def test_assistant_masks_from_apply_chat_template(tok):
    tok = copy.deepcopy(tok)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}### Assistant: {% generation %}"
        "{{ m['content'] }}{% endgeneration %}\n{% else %}### Human: {{ m['content'] }}\n{% endif %}{% endfor %}"
    )
    messages = [{"role": "user", "content": "what is two"}, {"role": "assistant", "content": "it is two"}]
    enc = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    batch = DataCollatorForCompletionOnlyLM(None, tokenizer=tok)([dict(enc)])
    assert kept_text(tok, batch["input_ids"][0], batch["labels"][0]).strip() == "it is two"


def test_input_noise_changes_only_completion_inputs_and_is_reproducible(tok):
    rows = [encode(tok, "### Human: keep this prompt intact\n### Assistant: " + "noisy words here " * 8)] * 2
    make = lambda seed: DataCollatorForCompletionOnlyLM(  # noqa: E731
        "### Assistant:", tokenizer=tok, input_noise=0.5, noise_mask_prob=0.5, seed=seed
    )
    clean = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=tok)(rows)
    a, b, c = make(3)(rows), make(3)(rows), make(4)(rows)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])
    assert torch.equal(a["labels"], clean["labels"])  # labels keep the original ids
    changed = a["input_ids"] != clean["input_ids"]
    assert changed.any() and (clean["labels"][changed] != IGNORE).all()
    assert not torch.equal(a["input_ids"][0], a["input_ids"][1])  # rows get their own draws
    collator = make(3)
    first, second = collator(rows), collator(rows)
    assert not torch.equal(first["input_ids"], second["input_ids"])  # a new draw per batch


def test_packed_batch_trains_like_the_unpacked_examples(tok):
    """Tiny Llama, eager attention, use_cache=False (transformers then derives a block-diagonal mask
    from position_ids): per-example logits, the loss and the gradients of the packed batch equal the
    padded batch's; the fastmask-patched model matches both."""
    from test_integrations_causal_lm import make

    rows = [
        encode(tok, "### Human: hi\n### Assistant: hello there friend"),
        encode(tok, "### Assistant: ok"),
        encode(tok, "### Human: why\n### Assistant: because it is"),
    ]
    rows = [[i % 97 for i in r] for r in rows]  # the tiny model's vocabulary
    template = [i % 97 for i in encode(tok, "### Assistant:")]

    class SmallTok:  # pads with id 0, as the tiny model expects
        pad_token_id, eos_token_id, padding_side, model_input_names = 0, 2, "right", ["input_ids", "attention_mask"]

        def decode(self, ids):
            return str(list(ids))

    padded = DataCollatorForCompletionOnlyLM(template, tokenizer=SmallTok())(rows)
    packed = DataCollatorForCompletionOnlyLM(template, tokenizer=SmallTok(), padding_free=True)(rows)
    stock = make("llama")
    patched = apply_fastmask(copy.deepcopy(stock))
    with torch.no_grad():
        logits_packed = stock(
            input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False
        ).logits
        logits_padded = stock(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False
        ).logits
    start = 0
    for i, r in enumerate(rows):
        torch.testing.assert_close(
            logits_packed[0, start : start + len(r)], logits_padded[i, : len(r)], rtol=1e-5, atol=1e-5
        )
        start += len(r)
    losses = []
    for model, batch in ((stock, padded), (stock, packed), (patched, packed), (patched, padded)):
        model.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        losses.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    for loss, grads in losses[1:]:
        torch.testing.assert_close(loss, losses[0][0], rtol=1e-5, atol=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, losses[0][1][name], rtol=1e-4, atol=1e-5, msg=name)
