"""``fastmask train --objective``: the objectives of fastmask.train_objectives, one short in-process
run of the command per objective (with ``--compare``), and the pieces the runs rely on (the stock
SFT collator gives fastmask's labels, the option checks, the seq2seq model kinds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastmask import cli, data
from fastmask import train_objectives as objectives


def run_train(tmp_path, *args):
    out = tmp_path / "run"
    code = cli.main(
        ["train", *args, "--max-steps", "2", "--batch-size", "2", "--no-progress", "--output-dir", str(out)]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["name"] for r in metrics["results"]] == ["fastmask", "stock"][: 1 + ("--compare" in args)]
    for r in metrics["results"]:
        assert r["steps"] == 2 and r["tokens_per_second"] > 0
        assert all(math.isfinite(x) for x in r["losses"]) and 0 < r["eval_loss"] < 20
        assert 0 <= r["eval_accuracy"] <= 1
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "model" / "config.json").exists()
    return metrics, out


def test_the_command_offers_exactly_the_objectives():
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    (option,) = [a for a in train._actions if "--objective" in a.option_strings]
    assert list(option.choices) == list(objectives.OBJECTIVES) == ["mlm", "span-corruption", "text-infilling", "sft"]
    assert option.default == "mlm"
    for objective in objectives.OBJECTIVES.values():
        assert objective.summary in option.help and objective.stock_description in train.description


@pytest.mark.parametrize(
    "args,message",
    [
        (["--objective", "sft", "--strategy", "span"], "--strategy applies to --objective mlm only, not sft"),
        (["--objective", "mlm", "--noise-density", "0.3"], "--noise-density applies to --objective span-corruption"),
        (["--objective", "span-corruption", "--model", "x"], "--model applies to --objective mlm only"),
        (["--objective", "mlm", "--mask-ratio", "0.5"], "--mask-ratio applies to --objective text-infilling only"),
        (["--objective", "sft", "--adaptive", "both"], "--adaptive applies to --objective mlm only, not sft"),
        (["--adaptive", "rate", "--compare"], "--adaptive runs its own comparison"),
        (["--adaptive", "content", "--strategy", "span"], "--adaptive masks single tokens; drop --strategy span"),
    ],
)
def test_an_option_of_another_objective_is_a_usage_error(capsys, args, message):
    assert cli.main(["train", *args, "--no-save"]) == cli.EXIT_USAGE
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert line.startswith("fastmask: error:") and message in line


def test_instruction_pairs_are_deterministic_questions_and_answers():
    pairs = data.instruction_pairs()
    questions = [q for q, _ in pairs]
    assert len(pairs) > 1000 and len(set(questions)) == len(questions)
    # a fixed order: module by module as CORPUS_MODULES lists them
    first_module = {m: i for i, m in reversed(list(enumerate(data.CORPUS_MODULES)))}
    order = [max(i for m, i in first_module.items() if q[10:].startswith(m + ".")) for q in questions]
    assert order == sorted(order)
    assert ("What does json.dumps do?", "Serialize ``obj`` to a JSON formatted ``str``.") in pairs
    assert all(q.startswith("What does ") and q.endswith(" do?") and 20 <= len(a) <= 200 for q, a in pairs)
    texts = data.instruction_texts(pairs[:3])
    assert texts[0] == f"Question: {pairs[0][0]}\n{data.RESPONSE_TEMPLATE} {pairs[0][1]}"


def test_stock_sft_collator_gives_the_labels_of_fastmasks():
    """Both pipelines of `--objective sft` train on the same labels: the per-row Python search
    (TRL's former collator) and DataCollatorForCompletionOnlyLM, on real examples, ragged."""
    tokenizer = data.default_tokenizer()
    objective = objectives.OBJECTIVES["sft"]
    texts = data.instruction_texts(data.instruction_pairs()[:40])
    texts[3] = "Question: a row without the template"
    features = [{"input_ids": ids} for ids in tokenizer(texts)["input_ids"]]
    with pytest.warns(UserWarning):
        ours = objective.collator("fastmask", None, tokenizer, seed=0)(features)
    with pytest.warns(UserWarning, match="not found in row 3"):
        stock = objective.collator("stock", None, tokenizer, seed=0)(features)
    assert torch.equal(ours["input_ids"], stock["input_ids"])
    assert torch.equal(ours["attention_mask"], stock["attention_mask"])
    assert torch.equal(ours["labels"], stock["labels"])
    labelled = ours["labels"] != -100
    assert labelled[3].sum() == 0 and labelled.sum(1)[:3].min() > 0
    answer = tokenizer.decode(ours["input_ids"][0][labelled[0]])
    assert answer == tokenizer.decode(tokenizer(data.instruction_pairs()[0][1])["input_ids"][1:])


def test_template_ids_in_context_follow_the_tokenizer():
    tokenizer = data.train_tokenizer("bpe", data.instruction_texts()[:400], vocab_size=400)
    ids = objectives.template_ids_in_context(tokenizer)
    row = tokenizer.encode(data.instruction_texts()[0], add_special_tokens=False)
    assert any(row[p : p + len(ids)] == ids for p in range(len(row)))


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_seq2seq_model_kinds_take_a_batch(kind):
    """The two encoder-decoder kinds a Seq2SeqObjective can name build from a tokenizer and train."""
    tokenizer = data.train_tokenizer("wordpiece", data.corpus_texts(max_chars=20_000), vocab_size=300)
    objectives._add_sentinels(tokenizer)
    config = type("Config", (), {"seq_len": 16})()
    torch.manual_seed(0)
    model = objectives.tiny_seq2seq_model(kind, tokenizer, config)
    ids = torch.randint(5, len(tokenizer), (2, 16))
    loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids[:, :6].contiguous()).loss
    loss.backward()
    assert math.isfinite(loss.item()) and model.config.vocab_size == len(tokenizer)
    with pytest.raises(ValueError, match="model kind 'gpt'"):
        objectives.tiny_seq2seq_model("gpt", tokenizer, config)


def test_train_sft_compare(tmp_path):
    """Same weights, data, order and labels: the patched model under DataCollatorForCompletionOnlyLM
    and the stock model under the Python collator have the same losses, step by step."""
    metrics, out = run_train(tmp_path, "--objective", "sft", "--seq-len", "48", "--compare")
    fast, stock = metrics["results"]
    torch.testing.assert_close(fast["losses"], stock["losses"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast["eval_loss"], stock["eval_loss"], rtol=1e-4, atol=1e-5)
    assert metrics["objective"]["name"] == "sft" and "LlamaForCausalLM" in metrics["objective"]["model"]
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "llama"


def test_train_span_corruption_compare(tmp_path):
    metrics, out = run_train(tmp_path, "--objective", "span-corruption", "--seq-len", "32", "--compare")
    assert metrics["config"]["noise_density"] == 0.15 and metrics["eval_accuracy"].startswith("target-token")
    assert json.loads((out / "model" / "config.json").read_text())["model_type"] == "t5"
    saved = __import__("transformers").AutoTokenizer.from_pretrained(str(out / "model"))
    assert saved.convert_tokens_to_ids("<extra_id_0>") == len(saved) - 1


def test_train_mlm(tmp_path):
    """The default objective through the restructured loop (its --compare runs in test_cli's slow tests)."""
    metrics, _ = run_train(tmp_path, "--seq-len", "32")
    assert metrics["objective"]["name"] == "mlm" and metrics["config"]["strategy"] == "token"


def test_train_text_infilling_compare(tmp_path):
    """BART rows (BOS + text + EOS from MiniLM's [CLS] / [SEP], [MASK] as <mask>) through fastmask's
    DataCollatorForTextInfilling and the numpy Flax BART collator."""
    metrics, out = run_train(tmp_path, "--objective", "text-infilling", "--seq-len", "24", "--compare")
    assert metrics["config"]["mask_ratio"] == 0.3 and metrics["config"]["poisson_lambda"] == 3.0
    assert "BartForConditionalGeneration" in metrics["objective"]["model"]
    saved = json.loads((out / "model" / "config.json").read_text())
    assert saved["model_type"] == "bart" and saved["decoder_start_token_id"] == saved["eos_token_id"]


def test_pmi_strategy_uses_the_corpus_vocabulary_and_compares_with_whole_words():
    """--strategy pmi: fastmask's collator and the held-out masks use the embedded corpus' PMI
    vocabulary (masks differ from whole-word masks of the same seed); --compare runs transformers'
    whole-word masking."""
    from transformers import DataCollatorForLanguageModeling as StockCollator

    from fastmask.train import TrainConfig

    config = TrainConfig(strategy="pmi", seq_len=64, batch_size=8, eval_batches=2, mlm_probability=0.3)
    objective = objectives.OBJECTIVES["mlm"]
    tokenizer = objective.tokenizer(config)
    ours = objective.collator("fastmask", config, tokenizer, seed=0)
    assert ours.strategy == "pmi" and ours.ngram_vocabulary is not None
    stock = objective.collator("stock", config, tokenizer, seed=0)
    assert isinstance(stock, StockCollator) and stock.whole_word_mask
    assert "offset_mapping" in objective.features([[101, 2000, 102]], config, tokenizer, "stock")[0]
    rows = data.tokenized_rows(tokenizer, data.corpus_texts()[:200], 64)[:16]
    pmi = objective.eval_batches(rows, config, tokenizer)
    config.strategy = "whole_word"
    words = objective.eval_batches(rows, config, tokenizer)
    assert sum(int((b["labels"] != -100).sum()) for b in pmi) > 0
    assert any(not torch.equal(p["labels"], w["labels"]) for p, w in zip(pmi, words))


def test_train_adaptive_reports_uniform_and_adaptive(tmp_path, capsys, monkeypatch):
    """`fastmask train --adaptive both`: the experiment's two runs on the same token budget, its
    table printed, metrics.json and the loss / rate / weights plot saved."""
    monkeypatch.setattr(data, "minilm_path", lambda: None)  # corpus WordPiece + small random BERT: quicker than MiniLM
    out = tmp_path / "adaptive"
    args = ["train", "--adaptive", "both", "--max-steps", "2", "--seq-len", "16", "--batch-size", "2"]
    assert cli.main([*args, "--no-progress", "--output-dir", str(out)]) == 0
    assert "| adaptive-both |" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    uniform, adaptive = result["runs"]
    assert result["adaptive"] == "both" and [uniform["name"], adaptive["name"]] == ["uniform", "adaptive-both"]
    assert uniform["input_tokens"] == adaptive["input_tokens"] == 2 * 2 * 16
    assert all(math.isfinite(run["eval"]["overall"]["loss"]) for run in (uniform, adaptive))
    assert len(adaptive["history"]) == 2 and "weights" in adaptive["history"][-1]
    assert (out / "loss_curve.png").stat().st_size > 1000
