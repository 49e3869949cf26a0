"""The Fisher on the architectures users train, against one forward+backward of each model's own loss.

Usage::

    python benchmarks/bench_architectures.py [--workloads bert gpt2 llama vit resnet18] [--repeats 5]

Workloads (random weights from configs, CPU, float32, 2 threads): a BERT-like masked-LM encoder, a
GPT-2-like causal LM with tied embeddings and padded batches, a Llama-like causal LM with tied
embeddings, a ViT classifier (all 4 layers, hidden 256, T = 128, batch 8), and a ResNet-18-style
CNN with eval-mode BatchNorm (basic blocks [2, 2, 2, 2], widths 64-512, 8 images of 3 × 64 × 64).
For each: seconds per batch, the ratio to fwd+bwd of the model's own loss on the same batches in
the same run (interleaved rounds, medians), and peak tensor memory as a ratio to fwd+bwd. Methods:
fisherkit's MC diagonal, KFAC (MC; expand and reduce) and EKFAC (MC), and the peers that run on the model when
installed (curvlinops' KFAC and EKFAC, Opacus' per-sample gradients).
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from functools import partial

import torch
from measure import interleaved_median_seconds, peak_tensor_bytes
from torch import Tensor, nn

import fisherkit as fk

HIDDEN, LAYERS, LENGTH, BATCH, VOCAB = 256, 4, 128, 8, 8192
WORKLOADS = ("bert", "gpt2", "llama", "vit", "resnet18")


def _token_batches(count: int, causal: bool) -> list[dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
        mask = torch.ones_like(ids)
        lengths = torch.randint(LENGTH // 2, LENGTH + 1, (BATCH,), generator=generator)
        mask[torch.arange(LENGTH) >= lengths.unsqueeze(1)] = 0
        labels = ids.masked_fill(mask == 0, -100)
        if not causal:  # masked LM: 15 % of the real tokens are targets
            chosen = torch.rand(ids.shape, generator=generator) < 0.15
            labels = labels.masked_fill(~chosen, -100)
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches


def make_workload(name: str) -> tuple[nn.Module, list]:
    """The model (eval mode) and its batches: dicts with ``labels`` (a model's own loss)."""
    import transformers

    torch.manual_seed(0)
    common = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": 4}
    if name == "bert":
        config = transformers.BertConfig(**common, intermediate_size=4 * HIDDEN, max_position_embeddings=LENGTH)
        return transformers.BertForMaskedLM(config).eval(), _token_batches(2, causal=False)
    if name == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=LENGTH, bos_token_id=0,
            eos_token_id=0, tie_word_embeddings=True,
        )  # fmt: skip
        return transformers.GPT2LMHeadModel(config).eval(), _token_batches(2, causal=True)
    if name == "llama":
        config = transformers.LlamaConfig(
            **common, intermediate_size=4 * HIDDEN, num_key_value_heads=2, max_position_embeddings=LENGTH,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval(), _token_batches(2, causal=True)
    if name == "vit":  # 128 patches of 4 × 4 from 3 × 32 × 64 images, plus the class token
        config = transformers.ViTConfig(
            image_size=(32, 64), patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
            num_attention_heads=4, intermediate_size=4 * HIDDEN, num_labels=10,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        batches = [
            {
                "pixel_values": torch.randn(BATCH, 3, 32, 64, generator=generator),
                "labels": torch.randint(0, 10, (BATCH,)),
            }
            for _ in range(2)
        ]
        return transformers.ViTForImageClassification(config).eval(), batches
    if name == "resnet18":
        generator = torch.Generator().manual_seed(0)
        batches = [(torch.randn(BATCH, 3, 64, 64, generator=generator), torch.randint(0, 10, (BATCH,)))]
        return resnet18(10).eval(), batches
    raise ValueError(name)


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.shortcut(x) + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet18(classes: int) -> nn.Module:
    """ResNet-18's layout (He et al. 2016): a 7 × 7 stem, basic blocks [2, 2, 2, 2], widths 64-512."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    width = 64
    for stage, outputs in enumerate((64, 128, 256, 512)):
        for block in range(2):
            layers.append(BasicBlock(width, outputs, 2 if stage and not block else 1))
            width = outputs
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def forward_backward(model: nn.Module, batches: list) -> Callable[[], None]:
    """The floor: the model's own loss, forward and backward, per batch."""

    def run() -> None:
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch).loss.backward()
            else:
                nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
        model.zero_grad(set_to_none=True)

    return run


def fisherkit_method(structure: str, **options: str) -> Callable[[nn.Module, list], Callable[[], None]]:
    def method(model: nn.Module, batches: list) -> Callable[[], None]:
        def run() -> None:
            fk.fisher(model, batches, structure, seed=0, progress=False, fallback=True, **options)

        return run

    return method


def peer_methods() -> dict[str, Callable[[nn.Module, list], Callable[[], None] | str]]:
    """The peers installed here that take an arbitrary model and loss."""
    methods: dict[str, Callable[[nn.Module, list], Callable[[], None] | str]] = {}
    if importlib.util.find_spec("curvlinops") is not None:
        for operator in ("KFAC", "EKFAC"):
            methods[f"curvlinops {operator} (mc; conv/linear parameters)"] = partial(
                _curvlinops, operator=f"{operator}LinearOperator"
            )
    if importlib.util.find_spec("opacus") is not None:
        methods["Opacus per-sample gradients"] = _opacus
    return methods


def _curvlinops(model: nn.Module, batches: list, operator: str) -> Callable[[], None] | str:
    if isinstance(batches[0], dict):
        return "takes (inputs, targets) batches of a model returning logits"
    import curvlinops

    cls = getattr(curvlinops, operator)
    params = _kronecker_parameters(model)  # curvlinops refuses the BatchNorm parameters
    loss = nn.CrossEntropyLoss(reduction="sum")

    def run() -> None:
        operator = cls(model, loss, params, batches, fisher_type="mc", mc_samples=1, check_deterministic=False)
        operator @ torch.ones(operator.shape[1])  # its statistics are computed on first use

    return run


def _kronecker_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of Linear and Conv2d layers: the part of the model every peer's KFAC supports."""
    return [p for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)) for p in m.parameters()]


def _opacus(model: nn.Module, batches: list) -> Callable[[], None] | str:
    if isinstance(batches[0], dict):
        return "takes (inputs, targets) batches of a model returning logits"
    from opacus import GradSampleModule

    wrapped = GradSampleModule(model, loss_reduction="sum")

    def run() -> None:
        for x, _ in batches:
            logits = wrapped(x)
            labels = torch.multinomial(logits.detach().softmax(-1), 1)[:, 0]
            nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
            for p in model.parameters():
                p.grad_sample = None
        wrapped.zero_grad(set_to_none=True)

    return run


def _refusal(method: Callable, model: nn.Module, batches: list) -> Callable[[], None] | str:
    """The prepared run, or why it cannot run on this model (a peer's own error, in one line)."""
    try:
        prepared = method(model, batches)
        if callable(prepared):
            prepared()  # a peer may refuse a layer only when it meets it
        return prepared
    except Exception as error:  # a peer's refusal becomes a row of the table
        return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


def bench(name: str, repeats: int, only: list[str] | None = None) -> list[tuple[str, float, float, float]]:
    model, batches = make_workload(name)
    methods = {
        "fwd+bwd": forward_backward,
        "fisherkit diagonal (mc)": fisherkit_method("diagonal"),
        "fisherkit KFAC (mc)": fisherkit_method("kfac"),
        "fisherkit KFAC-reduce (mc)": fisherkit_method("kfac", approximation="reduce"),
        "fisherkit EKFAC (mc)": fisherkit_method("ekfac"),
        **peer_methods(),
    }
    if only:
        methods = {label: m for label, m in methods.items() if label == "fwd+bwd" or any(w in label for w in only)}
    runs, rows = {}, []
    for label, method in methods.items():
        prepared = _refusal(method, model, batches)
        if callable(prepared):
            runs[label] = prepared
        else:
            rows.append((f"{label}: {prepared}", float("nan"), float("nan"), float("nan")))
    seconds = interleaved_median_seconds(runs, repeats)
    memory = {label: peak_tensor_bytes(run) for label, run in runs.items()}
    for label in runs:
        per_batch = seconds[label] / len(batches)
        rows.append((label, per_batch, seconds[label] / seconds["fwd+bwd"], memory[label] / memory["fwd+bwd"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", help="only methods whose label contains one of these words")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.workloads:
        print(
            f"\n#### {name}\n\n| method | s / batch | × fwd+bwd | × fwd+bwd memory |\n|---|---:|---:|---:|", flush=True
        )
        for label, per_batch, ratio, memory in bench(name, args.repeats, args.methods):
            print(f"| {label} | {per_batch:.4f} | {ratio:.2f} | {memory:.2f} |", flush=True)


if __name__ == "__main__":
    main()
