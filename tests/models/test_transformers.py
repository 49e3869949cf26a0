"""Hugging Face models from small configs (random weights, nothing downloaded), with their own dict
batches and outputs, against a float64 per-sample loop over each model's own loss.

The models' losses cast logits to float32 before the cross-entropy, so the oracle built on them is
accurate to about 1e-7 relative; the tolerance below leaves room for that and nothing else (the
errors these tests guard against are of order one).
"""

import pytest
import torch
from oracles import TOLERANCES
from torch import nn

import fisherkit as fk
from fisherkit.regularizers import EWC

transformers = pytest.importorskip("transformers")

HF_LOSS_TOL = {"rtol": 1e-5, "atol": 1e-12}
VOCAB, LENGTH, BATCH = 11, 6, 4


def _padded_tokens():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=g)
    mask = torch.ones(BATCH, LENGTH, dtype=torch.long)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    return ids, mask


def _gpt2(tied: bool = True) -> nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=8, n_layer=2, n_head=2, tie_word_embeddings=tied,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config).double().eval()


def _llama(tied: bool = True) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=16, tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).double().eval()


def _bert_config() -> object:
    return transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3,
    )  # fmt: skip


def _hf_loss_loop(model: nn.Module, batch: dict, count) -> dict[str, torch.Tensor]:
    """(1/N) Σ_n (∇_θ log p(y_n | x_n))² with log p = −(the model's own mean loss) · (labels counted)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for _, p in named]
    rows = next(iter(batch.values())).shape[0]
    for n in range(rows):
        one = {k: v[n : n + 1] for k, v in batch.items()}
        logp = -model(**one).loss * count(one)
        for total, grad in zip(sums, torch.autograd.grad(logp, [p for _, p in named], allow_unused=True)):
            if grad is not None:
                total += grad.square()
    return {name: total / rows for (name, _), total in zip(named, sums)}


def _next_tokens(one: dict) -> torch.Tensor:
    return (one["labels"][:, 1:] != -100).sum()


def _all_labels(one: dict) -> torch.Tensor:
    return (one["labels"] != -100).sum()


def _assert_matches(fisher: fk.Curvature, want: dict[str, torch.Tensor], **tolerance) -> None:
    assert sorted(fisher.names) == sorted(want)
    for name, diagonal in zip(fisher.names, fisher.diagonal()):
        torch.testing.assert_close(diagonal, want[name], **(tolerance or HF_LOSS_TOL), msg=name)


@pytest.mark.parametrize("make", [_gpt2, _llama, lambda: _gpt2(tied=False)], ids=["gpt2-tied", "llama-tied", "gpt2"])
def test_causal_lm_diagonal_equals_the_loop_over_its_own_loss(make):
    torch.manual_seed(0)
    model = make()
    ids, mask = _padded_tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    with warnings_as_errors():  # every layer has a fast rule: no fallback warning
        fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    want = _hf_loss_loop(model, batch, _next_tokens)
    _assert_matches(fisher, want)
    if isinstance(model, transformers.GPT2LMHeadModel):  # broadcast (1, T) position ids; the tied embedding
        for name in ("transformer.wpe.weight", "transformer.wte.weight"):
            torch.testing.assert_close(fisher.diagonal()[fisher.names.index(name)], want[name], **HF_LOSS_TOL)


class warnings_as_errors:
    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)


def test_exact_fisher_of_a_padded_causal_lm_without_labels_counts_real_next_tokens_only():
    torch.manual_seed(0)
    model = _gpt2()
    ids, mask = _padded_tokens()
    fisher = fk.diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], fisher_type="exact")
    params = [p for p in model.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    for n in range(BATCH):
        logits = model(input_ids=ids[n : n + 1], attention_mask=mask[n : n + 1]).logits[0]
        for t in range(LENGTH - 1):
            if mask[n, t + 1] == 0:
                continue  # the next token is padding: it predicts nothing
            log_probs = logits[t].log_softmax(-1)
            for c in range(VOCAB):
                grads = torch.autograd.grad(log_probs[c], params, retain_graph=True)
                for total, grad in zip(sums, grads):
                    total += log_probs[c].exp().detach() * grad.square()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    _assert_matches(fisher, {n: s / BATCH for n, s in zip(names, sums)}, **TOLERANCES[torch.float64])


def test_masked_lm_with_tied_decoder_and_aliased_bias():
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(_bert_config()).double().eval()
    ids, mask = _padded_tokens()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, ::2] = -100  # only some positions are masked-LM targets
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with warnings_as_errors():
        fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    _assert_matches(fisher, _hf_loss_loop(model, batch, _all_labels))


def test_sequence_classifier_reads_the_mask_as_an_input_only():
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_bert_config()).double().eval()
    ids, mask = _padded_tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 2, 1, 2])}
    fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    _assert_matches(fisher, _hf_loss_loop(model, batch, lambda one: 1))


def test_vision_transformer_with_bare_parameters():
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config).double().eval()
    pixels = torch.randn(BATCH, 3, 8, 8, dtype=torch.float64)
    batch = {"pixel_values": pixels, "labels": torch.tensor([0, 1, 2, 1])}
    with pytest.warns(UserWarning, match=r"no layer rule for vit.embeddings \(ViTEmbeddings\)"):
        fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    want = _hf_loss_loop(model, batch, lambda one: 1)
    _assert_matches(fisher, want)
    for name in ("vit.embeddings.cls_token", "vit.embeddings.position_embeddings"):
        assert float(want[name].abs().sum()) > 0


def test_kfac_of_a_tied_lm_gives_the_tied_embedding_an_exact_diagonal_block():
    torch.manual_seed(0)
    model = _gpt2()
    ids, mask = _padded_tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    kfac = fk.kfac_fisher(model, [batch], fisher_type="empirical")
    kinds = {block.names[0]: type(block).__name__ for block in kfac.blocks}
    assert kinds["transformer.wte.weight"] == "DiagonalBlock"
    assert kinds["transformer.h.0.attn.c_attn.weight"] == "KroneckerBlock"  # Conv1D, transposed layout
    want = _hf_loss_loop(model, batch, _next_tokens)
    index = kfac.names.index("transformer.wte.weight")
    torch.testing.assert_close(kfac.diagonal()[index], want["transformer.wte.weight"], **HF_LOSS_TOL)
    block = next(b for b in kfac.blocks if b.names[0] == "transformer.h.0.attn.c_attn.weight")
    assert block.transposed
    ekfac = fk.ekfac_fisher(model, [batch], fisher_type="empirical")
    assert float(ekfac.trace()) > 0


def test_ewc_and_ngd_run_on_hugging_face_batches():
    torch.manual_seed(0)
    model = _gpt2()
    ids, mask = _padded_tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    ewc = EWC(model, 10.0, fisher_type="empirical")
    ewc.end_task([batch])
    want = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    torch.testing.assert_close(ewc.fishers[0][0].to_dense(), want.to_dense())
    optimizer = fk.NGD(model, lr=1e-3, structure="diagonal", fisher_type="empirical", damping=1e-2, stats_every=1)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()
    torch.testing.assert_close(optimizer.preconditioner.fisher.to_dense(), want.to_dense())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert float(ewc.penalty()) > 0


def test_a_subclass_of_a_causal_lm_keeps_the_shifted_convention():
    class MyGPT2(transformers.GPT2LMHeadModel):
        pass

    torch.manual_seed(0)
    base = _gpt2()
    model = MyGPT2(base.config).double().eval()
    model.load_state_dict(base.state_dict())
    ids, mask = _padded_tokens()
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    fisher = fk.diagonal_fisher(model, [batch], fisher_type="empirical")
    _assert_matches(fisher, _hf_loss_loop(model, batch, _next_tokens))
