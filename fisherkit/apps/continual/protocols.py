"""Published continual-learning protocols as presets (``fisherkit cl --protocol NAME``).

Each preset holds every setting of a paper's experiment, taken from the paper and its authors'
code (cited per source below): the data preparation, the network, the optimizer and whether it
is reset between tasks, the batch size and the training length per task, the joint baseline,
what EWC's Fisher is estimated on and with how many samples, and each method's strength. The
strengths are written in fisherkit's conventions (EWC: λ/2 Σ F (θ − θ*)²; SI: c Σ Ω (θ − θ̃)²;
MAS: λ Σ Ω (θ − θ*)²); where a paper's convention differs, ``conversions`` says how they were
converted. ``published`` holds the paper's average test accuracy after the last task, on MNIST.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

from fisherkit.apps.continual.datasets import Dataset, prepared
from fisherkit.apps.continual.experiment import Method
from fisherkit.apps.continual.scenarios import Scenario, permuted_scenario, split_scenario
from fisherkit.apps.continual.training import TrainConfig


@dataclass(frozen=True)
class Source:
    """Where a protocol's settings come from.

    Attributes:
        label: Short form for reports ("van de Ven & Tolias 2019").
        paper: The full citation.
        code: The authors' code the settings were read from (repository, files, commit).
    """

    label: str
    paper: str
    code: str


VAN_DE_VEN_2019 = Source(
    "van de Ven & Tolias 2019",
    "G. M. van de Ven and A. S. Tolias, Three scenarios for continual learning, arXiv:1904.07734 (2019); "
    "results tables of Split and Permuted MNIST",
    "github.com/GMvandeVen/continual-learning at commit f0b1461 (param_values.py: iterations, learning rates, "
    "widths, λ, γ and c per scenario; data.py: 28×28 Split with the class order drawn per seed, Permuted on "
    "32×32 zero-padded images with every task permuted; compare_all.py: batch 128, Adam not reset; "
    "continual_learner.py: the Fisher on every training sample of the task with the predicted label, SI's ξ = 0.1)",
)
HSU_2018 = Source(
    "Hsu et al. 2018",
    "Y.-C. Hsu, Y.-C. Liu, A. Ramasamy and Z. Kira, Re-evaluating continual learning scenarios: a "
    "categorization and case for strong baselines, NeurIPS Continual Learning Workshop, arXiv:1810.12488 "
    "(2018); Table 2 (Split MNIST)",
    "github.com/GT-RIPL/Continual-Learning-Benchmark (scripts/split_MNIST_incremental_{task,domain,class}.sh: "
    "MLP400, Adam lr 0.001, batch 128, 4 epochs, reg_coef per method; dataloaders/base.py: 32×32 zero-padded, "
    "normalized with mean 0.1000, std 0.2752; agents/regularization.py and customization.py: the Fisher on up "
    "to 60,000 training samples with the predicted label, SI's ξ = 0.1, online MAS; agents/default.py: the "
    "optimizer is not reset)",
)
ZENKE_2017 = Source(
    "Zenke et al. 2017",
    "F. Zenke, B. Poole and S. Ganguli, Continual learning through synaptic intelligence, ICML 2017; "
    "Fig. 4 (Permuted MNIST)",
    "github.com/ganguli-lab/pathint (fig_permuted_mnist/Permuted MNIST.ipynb: 784-2000-2000-10, Adam lr 0.001, "
    "batch 256, 20 epochs per task, ξ = 0.1, c ∈ {0, 0.01, 0.1, 1}, the optimizer not reset; pathint/utils.py: "
    "the first task unpermuted)",
)


@dataclass(frozen=True)
class Protocol:
    """One published experiment.

    Attributes:
        name: The ``--protocol`` name.
        source: Paper and code.
        kind: ``"split"`` or ``"permuted"``.
        setting: ``"task"``, ``"domain"`` or ``"class"``.
        tasks: Number of tasks.
        hidden: Hidden widths of the MLP.
        lr: Adam's learning rate.
        batch_size: Samples per step.
        iterations: Steps per task (None: ``epochs``).
        epochs: Passes per task (None: ``iterations``).
        joint: ``TrainConfig.joint``.
        methods: The methods the paper compares, in its order.
        strengths: Method → λ (EWC, MAS) or c (SI), in fisherkit's conventions.
        published: Method → average test accuracy (%) after the last task, as published (MNIST).
        decay: Online EWC's γ.
        damping: SI's ξ.
        pad: Zero padding on every side of the 28×28 images.
        normalize: ``(mean, std)`` applied to the pixels (after padding), or None.
        shuffle_classes: Split: the class order is drawn per seed.
        permute_first: Permuted: the first task is permuted too.
        per_seed: The class order or permutations are drawn per seed (else seed 0's for all).
        fisher_type: EWC's Fisher type.
        fisher_samples: Training samples per task the Fisher is estimated on (None: all).
        conversions: How the published hyperparameters were converted, where they differ.
    """

    name: str
    source: Source
    kind: str
    setting: str
    tasks: int
    hidden: tuple[int, ...]
    lr: float
    batch_size: int
    iterations: int | None
    epochs: int | None
    joint: str
    methods: tuple[str, ...]
    strengths: Mapping[str, float]
    published: Mapping[str, float]
    decay: float = 1.0
    damping: float = 0.1
    pad: int = 0
    normalize: tuple[float, float] | None = None
    shuffle_classes: bool = False
    permute_first: bool = False
    per_seed: bool = False
    fisher_type: str = "predicted"
    fisher_samples: int | None = None
    conversions: str = ""

    @property
    def budget_option(self) -> str:
        """The option that shortens training for a CPU budget: ``--iterations`` or ``--epochs``."""
        return "--iterations" if self.iterations is not None else "--epochs"

    def config(self, iterations: int | None = None, epochs: int | None = None) -> TrainConfig:
        """The training configuration; ``iterations`` or ``epochs`` override the training length
        per task (a CPU budget), everything else is the protocol's."""
        return TrainConfig(
            epochs=epochs or self.epochs or 1,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer="adam",
            hidden=self.hidden,
            fisher_samples=self.fisher_samples,
            iterations=iterations or self.iterations,
            reset_optimizer=False,
            joint=self.joint,
        )

    def method(self, name: str) -> Method:
        """``name`` with the protocol's strength, Fisher type, γ and ξ."""
        return Method(name, self.strengths.get(name, 0.0), self.fisher_type, self.decay, self.damping)

    def scenario(self, dataset: Dataset) -> Scenario:
        """The tasks, built from ``dataset`` prepared as the protocol prepares MNIST."""
        data = prepared(dataset, self.pad, self.normalize)
        if self.kind == "split":
            build = partial(split_scenario, data, self.setting, self.tasks, 0.0, shuffle_classes=self.shuffle_classes)
        else:
            build = partial(permuted_scenario, data, self.tasks, 0.0, setting=self.setting,
                            permute_first=self.permute_first)  # fmt: skip
        scenario = build(0)
        scenario.per_seed = build if self.per_seed else None  # build(seed): the next positional argument
        return scenario

    def describe(self, config: TrainConfig, scenario: Scenario) -> str:
        """The settings as one line for a report's header."""
        published = self.iterations if self.iterations is not None else self.epochs
        length = config.iterations if config.iterations is not None else config.epochs
        unit = "iterations" if config.iterations is not None else "epochs"
        shortened = f" (the protocol's {published}, shortened for a CPU budget)" if length != published else ""
        data = [
            f"padded to {28 + 2 * self.pad}×{28 + 2 * self.pad}" if self.pad else "",
            f"normalized with mean {self.normalize[0]}, std {self.normalize[1]}" if self.normalize else "",
            "class order drawn per seed" if self.shuffle_classes else "",
            "every task permuted" if self.permute_first else "",
            "the tasks drawn per seed" if self.per_seed and not self.shuffle_classes else "",
        ]
        widths = "-".join(map(str, (scenario.num_features, *self.hidden, scenario.num_outputs)))
        parts = [
            f"protocol {self.name} ({self.source.label}): {scenario.name}, {self.setting}-incremental, "
            f"{self.tasks} tasks",
            *(part for part in data if part),
            f"MLP {widths}, Adam lr {self.lr:g} (one optimizer through all tasks), batch {self.batch_size}, "
            f"{length} {unit} per task{shortened}",
            f"joint training: {self.joint}",
        ]
        if any("ewc" in name for name in self.methods):
            samples = "every" if self.fisher_samples is None else f"up to {self.fisher_samples:,}"
            parts.append(f"EWC's Fisher {self.fisher_type!r} on {samples} training sample(s) per task")
        parts.append(", ".join(self._strength(name) for name in self.methods if name in self.strengths))
        return "; ".join(parts)

    def _strength(self, name: str) -> str:
        value = self.strengths[name]
        if name == "si":
            return f"si c={value:g} ξ={self.damping:g}"
        if name == "online-ewc":
            return f"online-ewc λ={value:g} γ={self.decay:g}"
        return f"{name} λ={value:g}"


def _van_de_ven(kind: str, setting: str, strengths: dict[str, float], decay: float,
                published: dict[str, float]) -> Protocol:  # fmt: skip
    split = kind == "split"
    return Protocol(
        name=f"vandeven2019-{kind}-{setting}",
        source=VAN_DE_VEN_2019,
        kind=kind,
        setting=setting,
        tasks=5 if split else 10,
        hidden=(400, 400) if split else (1000, 1000),
        lr=1e-3 if split else 1e-4,
        batch_size=128,
        iterations=2000 if split else 5000,
        epochs=None,
        joint="cumulative",
        methods=("naive", "joint", "ewc", "online-ewc", "si"),
        strengths=strengths,
        published=published,
        decay=decay,
        pad=0 if split else 2,
        shuffle_classes=split,
        permute_first=not split,
        per_seed=True,
        conversions="EWC, online EWC and SI use fisherkit's conventions already (λ/2 Σ F Δ², c Σ Ω Δ²).",
    )


def _hsu(setting: str, strengths: dict[str, float], published: dict[str, float]) -> Protocol:
    return Protocol(
        name=f"hsu2018-split-{setting}",
        source=HSU_2018,
        kind="split",
        setting=setting,
        tasks=5,
        hidden=(400, 400),
        lr=1e-3,
        batch_size=128,
        iterations=None,
        epochs=4,
        joint="union",
        methods=("naive", "joint", "ewc", "online-ewc", "si", "mas"),
        strengths=strengths,
        published=published,
        pad=2,
        normalize=(0.1000, 0.2752),
        fisher_samples=60000,
        conversions=(
            "EWC: Hsu et al. penalize reg_coef · Σ F Δ², so λ = 2 · reg_coef. SI: c = reg_coef. MAS: their "
            "importance is |∇ of the batch mean of f²| (mean over 128 samples and the head's C outputs), fisherkit's "
            "the per-sample mean of |∇ ‖f‖²|; λ = reg_coef / C (C = 2, 2, 10 for task, domain, class), which "
            "matches where the samples' gradients agree in sign and penalizes more where they do not."
        ),
    )


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in [
        _van_de_ven("split", "task", {"ewc": 1e7, "online-ewc": 1e8, "si": 50.0}, 0.8,
                    {"naive": 87.19, "joint": 99.66, "ewc": 98.64, "online-ewc": 99.12, "si": 99.09}),
        _van_de_ven("split", "domain", {"ewc": 1e6, "online-ewc": 1e8, "si": 500.0}, 0.7,
                    {"naive": 59.21, "joint": 98.42, "ewc": 63.95, "online-ewc": 64.32, "si": 65.36}),
        _van_de_ven("split", "class", {"ewc": 1e8, "online-ewc": 1e9, "si": 0.5}, 0.8,
                    {"naive": 19.90, "joint": 97.94, "ewc": 20.01, "online-ewc": 19.96, "si": 19.99}),
        _van_de_ven("permuted", "task", {"ewc": 500.0, "online-ewc": 500.0, "si": 5.0}, 0.8,
                    {"naive": 81.79, "joint": 97.68, "ewc": 94.74, "online-ewc": 95.96, "si": 94.75}),
        _van_de_ven("permuted", "domain", {"ewc": 500.0, "online-ewc": 1000.0, "si": 5.0}, 0.9,
                    {"naive": 78.51, "joint": 97.59, "ewc": 94.31, "online-ewc": 94.42, "si": 95.33}),
        _van_de_ven("permuted", "class", {"ewc": 1.0, "online-ewc": 5.0, "si": 0.1}, 1.0,
                    {"naive": 17.26, "joint": 97.59, "ewc": 25.04, "online-ewc": 33.88, "si": 29.31}),
        _hsu("task", {"ewc": 200.0, "online-ewc": 800.0, "si": 300.0, "mas": 0.5},
             {"naive": 93.46, "joint": 99.52, "ewc": 97.70, "online-ewc": 98.04, "si": 98.56, "mas": 99.22}),
        _hsu("domain", {"ewc": 200.0, "online-ewc": 1400.0, "si": 3000.0, "mas": 5000.0},
             {"naive": 55.16, "joint": 98.59, "ewc": 58.85, "online-ewc": 57.33, "si": 64.76, "mas": 68.57}),
        _hsu("class", {"ewc": 1200.0, "online-ewc": 200.0, "si": 600.0, "mas": 0.1},
             {"naive": 19.71, "joint": 97.53, "ewc": 19.80, "online-ewc": 19.77, "si": 19.67, "mas": 19.52}),
        Protocol(
            name="zenke2017-permuted",
            source=ZENKE_2017,
            kind="permuted",
            setting="domain",
            tasks=10,
            hidden=(2000, 2000),
            lr=1e-3,
            batch_size=256,
            iterations=None,
            epochs=20,
            joint="union",
            methods=("naive", "si"),
            strengths={"si": 0.1},
            published={"si": 97.0},
            conversions="SI: c Σ Ω Δ² as fisherkit's. The paper plots its results (Fig. 4): SI (c = 0.1) ≈ 97 %.",
        ),
    ]
}  # fmt: skip
