"""The schema of a run's configuration.

A run is described by one `ExperimentConfig`, built in layers (ddbackdoor.config_build): profile
defaults (ddbackdoor.profiles), then the YAML file, then `key=value` overrides, so the resolved
config written to a run directory says exactly what ran. Its keys are of two kinds: the spec, which
says what a run computes, and the runtime options (marked `RUNTIME`: where the data is, threads,
memory, checkpoints, logs), which say how it executes and count in no run id or resume check
(ddbackdoor.identity). Names that need a registry are checked one layer up, in
`ddbackdoor.resolve.build_config`, the one place every config is validated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Profile = Literal["paper", "medium", "quick", "smoke"]


# A field's marker for a runtime option: how a run executes, never what it computes.
RUNTIME = {"runtime": True}


class Section(BaseModel):
    """A config section (`name.key=value`): unknown keys are errors. A plugin's attack or distiller
    declares its own section as a subclass (`options`), named after it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    """The dataset's split and size; where its files are (`root`, default $DDBACKDOOR_DATA, else
    ~/.cache/ddbackdoor/data) and whether a missing one is fetched (`download`: auto, true, false)
    are runtime options (docs/data.md)."""

    root: str | None = Field(None, json_schema_extra=RUNTIME)
    download: bool | Literal["auto"] = Field("auto", json_schema_extra=RUNTIME)
    image_size: int = Field(32, ge=8, le=256)
    # a stratified share of the training split held out as a validation set: never poisoned, never
    # distilled; evaluation scores the victims on it too (metrics.json `validation`), so settings
    # can be chosen without the test set (data/splits.py)
    val_portion: float = Field(0.0, ge=0, lt=1)
    # the finished-set attack: distil from this run's synthetic set instead of the real training
    # images (data/from_run.py); the test split stays the dataset's
    from_run: str | None = None


class NetConfig(Section):
    """Options of the distillation network (ConvNet variants in the DC literature)."""

    width: int = Field(128, ge=1, le=4096)
    depth: int = Field(3, ge=1, le=6)
    norm: str = "instancenorm"
    act: str = "relu"
    pooling: str = "avgpooling"
    hidden: int = Field(192, ge=0, le=65536)


class DCConfig(Section):
    """Dataset Condensation with gradient matching; defaults are the authors'."""

    init: Literal["noise", "real"] = "noise"
    lr_img: float = Field(0.1, gt=0)
    momentum_img: float = Field(0.5, ge=0, lt=1)
    batch_real: int = Field(256, ge=1)
    outer_loop: int | None = Field(None, ge=1)
    inner_loop: int | None = Field(None, ge=0)
    lr_net: float = Field(0.01, gt=0)
    batch_train: int = Field(256, ge=1)
    bn_images_per_class: int = Field(16, ge=1)
    # the fast paths and when each is used (docs/speed.md): all classes in one backward ("auto":
    # on CUDA only), NHWC layout, torch.compile of the plain passes ("auto": a CPU from width 64)
    matching: Literal["auto", "loop", "batched"] = "loop"
    channels_last: bool = False
    compile: bool | Literal["auto"] = "auto"


class DSAConfig(Section):
    """Differentiable siamese augmentation (Zhao & Bilen, 2021); defaults are theirs."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"


class DMConfig(Section):
    """Distribution matching (Zhao & Bilen, 2023); defaults are theirs, `trigger_*` are ours: DM
    trains no network, so DOORPING's `on_network` gets, every `trigger_every` iterations, the
    iteration's random network (`random`) or one trained like a victim for `trigger_epochs` epochs
    on the current synthetic set (`trained`); docs/decisions.md says why `random`."""

    init: Literal["noise", "real"] = "real"
    lr_img: float = Field(1.0, gt=0)
    momentum_img: float = Field(0.5, ge=0, lt=1)
    batch_real: int = Field(256, ge=1)
    trigger_net: Literal["random", "trained"] = "random"
    trigger_every: int = Field(10, ge=1)
    trigger_epochs: int = Field(50, ge=1)


class DDConfig(Section):
    """Dataset distillation (Wang et al., 2018) as in the authors' DD code .

    `ipc` images per class are split into `distill_steps` data steps (ipc must be a
    multiple), replayed `distill_epochs` times, each unrolled step with its own learned lr.
    """

    distill_steps: int = Field(10, ge=1)
    distill_epochs: int = Field(3, ge=1)
    lr_init: float = Field(0.001, gt=0)  # every step's lr at the start (softplus-parametrised)
    lr: float = Field(0.01, gt=0)  # Adam on the images and the raw lrs
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay_epochs: int = Field(40, ge=1)  # Adam's lr x decay_factor every this many real-data epochs
    decay_factor: float = Field(0.5, gt=0, le=1)
    batch_real: int = Field(1024, ge=1)
    init: Literal["random", "fixed"] = "random"  # a fresh init per iteration, or one fixed init
    victim_protocol: Literal["honest", "authors"] = "honest"


class KIPConfig(Section):
    """KIP (`distill=kip`, distill/kip.py): kernel ridge regression with the NTK of a ReLU MLP.
    Defaults after KIP's released runs (Adam lr 0.01 on the images, relative ridge 1e-6)."""

    depth: int = Field(1, ge=0)  # hidden layers of the fully-connected network whose NTK is used
    reg: float = Field(1e-6, ge=0)
    lr_img: float = Field(0.01, gt=0)
    batch_real: int = Field(50, ge=1)  # real images per class in each iteration's target batch
    init: Literal["real", "noise"] = "real"


class MTTConfig(Section):
    """MTT (`distill=mtt`, distill/mtt.py). Defaults: the MTT authors' CIFAR-10 IPC-10 row (their
    lr_img 1000 assumed ZCA-whitened images; without ZCA we keep it, named in
    docs/beyond-the-paper.md)."""

    num_experts: int = Field(100, ge=1)
    expert_epochs_total: int = Field(50, ge=1)  # epochs each expert trains (buffer.py's train_epochs)
    lr_teacher: float = Field(0.01, gt=0)  # experts' SGD lr, and the learned step size's start
    batch_train: int = Field(256, ge=1)
    expert_epochs: int = Field(2, ge=1)  # M: the student matches expert(s + M)
    max_start_epoch: int = Field(20, ge=0)
    syn_steps: int = Field(30, ge=1)
    lr_img: float = Field(1000.0, gt=0)
    lr_lr: float = Field(1e-5, gt=0)
    init: Literal["real", "noise"] = "real"
    # which networks DOORPING-like attacks update their trigger on: `target`, the expert weights each
    # iteration matches (the experts are not retrained); `experts`, every expert after each of its
    # epochs, re-stamping the pool the next epoch trains on; `both`
    trigger_net: Literal["target", "experts", "both"] = "target"


class LogConfig(Section):
    """Optional logs besides run.log and history.jsonl."""

    tensorboard: bool = False  # RUN/tensorboard/: loss per iteration, scores per evaluation


class CheckpointConfig(Section):
    """Resumable runs: a checkpoint every `every` iterations and at the end (0 = only at the end)."""

    every: int = Field(10, ge=0)


class PoisonConfig(Section):
    """Poison-set selection and the trigger patch."""

    portion: float = Field(0.01, ge=0, le=1)
    trigger_size: int = Field(2, ge=1)
    target: int = Field(0, ge=0)
    clip: bool = True
    # the fixed patch of NAIVEATTACK (and of clean runs' ASR): all white (the paper's), or a
    # one-pixel checkerboard, which stays distinct where the patch lands on a bright object
    pattern: Literal["white", "checkerboard"] = "white"


class DoorpingConfig(Section):
    """Trigger re-optimisation. Defaults are the authors'."""

    layer: int = Field(-2, le=-1)
    topk: int = Field(1, ge=1)
    alpha: float = Field(10.0, gt=0)
    lr: float = Field(0.08, gt=0)
    max_steps: int = Field(1000, ge=1)
    stop_loss: float = Field(0.5, ge=0)
    schedule: Literal["authors", "every_outer"] = "authors"
    dead_neuron_floor: float = Field(0.0, ge=0)
    check_every: int = Field(16, ge=1)


class TargetPatchConfig(Section):
    """TARGETPATCH (ours, `attack=target_patch`): a valid-pixel trigger that raises the current
    network's target logit on stamped real images of the other classes (attacks/target_patch.py)."""

    steps: int = Field(50, ge=1)
    lr: float = Field(0.1, gt=0)
    batch: int = Field(64, ge=1)
    freeze_after: float = Field(0.8, ge=0, le=1)  # share of iterations after which the trigger stays


class SeededConfig(Section):
    """SEEDED (ours, `attack=seeded`, attacks/seeded.py): NAIVEATTACK whose target class's first
    `images` synthetic images start as poisoned images of other classes, one source class after
    another, and whose poisoned images make up `share` of every real batch of the target class;
    with `typical` its other images start as the medoids of a k-means over its clean images.
    Seven other options were tried and left out (docs/decisions.md)."""

    images: int = Field(7, ge=0)
    share: float = Field(0.5, ge=0, le=1)
    typical: bool = True


class InvisibleConfig(Section):
    """INVISIBLE (the authors' third attack, as intended; `attack=invisible`): a full-frame
    additive delta kept under an adaptive L-inf threshold tau (attacks/invisible.py). Units:
    DOORPING's layer/topk/alpha."""

    tau: float = Field(8 / 255, gt=0, le=1)  # starting threshold: the usual "invisible" budget
    tau_decay: float = Field(0.9, gt=0, le=1)  # tau *= this after an update that stayed under it
    tau_min: float = Field(1 / 255, gt=0, le=1)
    penalty: float = Field(10.0, ge=0)  # weight of sum(max(0, |delta| - tau))
    lr: float = Field(0.005, gt=0)  # Adam on delta, in pixel units
    steps: int = Field(50, ge=1)
    batch: int = Field(64, ge=1)  # poisoned images per update
    activation_floor: float = Field(0.1, ge=0)  # a dead unit's target is alpha * this, not 0


class BlendConfig(Section):
    """SIMPLE-TRIGGER (`attack=blend`): x' = (1 - opacity) x + opacity P, P a fixed random image."""

    opacity: float = Field(0.1, gt=0, le=1)


class RelaxTriggerConfig(Section):
    """RELAX-TRIGGER (`attack=relax_trigger`, attacks/relax_trigger.py): the patch minimising a
    kernel ridge regression's held-out error on poisoned data, with KIP's kernel (`kip.depth`)."""

    steps: int = Field(100, ge=1)
    lr: float = Field(0.1, gt=0)
    per_class: int = Field(50, ge=1)  # real images per class in the fitting and held-out parts
    reg: float = Field(1e-6, ge=0)


class IDMConfig(Section):
    """IDM (`distill=idm`, distill/idm.py): the authors' command for CIFAR-10 at IPC 10 (their
    command.txt); no official Fashion-MNIST or MNIST command exists."""

    init: Literal["noise", "real"] = "real"  # real: each image a mosaic of `factor`^2 real images
    lr_img: float = Field(0.2, gt=0)
    momentum_img: float = Field(0.5, ge=0, lt=1)
    batch_real: int = Field(256, ge=1)
    factor: int = Field(2, ge=1, le=4)  # each synthetic image holds factor x factor smaller images
    ce_weight: float = Field(0.5, ge=0)  # times the matching network's training accuracy in percent
    net_num: int = Field(100, ge=1)  # networks kept in the queue (oldest out first)
    initial_nets: int = Field(3, ge=1)
    net_every: int = Field(30, ge=1)  # a fresh network joins every this many iterations
    train_nets: int = Field(2, ge=0)  # networks trained on real batches after each image update
    train_steps: int = Field(10, ge=0)  # SGD steps each of them takes
    batch_train: int = Field(256, ge=1)
    lr_net: float = Field(0.01, gt=0)
    meter_every: int = Field(100, ge=1)  # accuracy meters start over every this many iterations
    trigger_every: int = Field(10, ge=1)  # the matching network goes to the attack this often


class BoundaryConfig(Section):
    """What InkDrop and SNEAKDOOR share (attacks/boundary.py): the releases' hard-coded values."""

    source: int | None = Field(None, ge=0)  # None: the surrogate's class most often taken for the target
    surrogate_epochs: int = Field(10, ge=1)
    surrogate_lr: float = Field(0.001, gt=0)
    pool_share: float = Field(0.2, gt=0, le=1)  # of the source class, by the target logit
    train_share: float = Field(0.7, gt=0, le=1)  # of that pool: trigger training and poison
    golden: int = Field(256, ge=1)  # correctly classified target images, by the target logit
    epsilon: float = Field(0.5, gt=0)  # L-inf bound in normalised units (pixels: epsilon * std)
    lr: float = Field(0.001, gt=0)
    batch: int = Field(256, ge=1)
    budget: int = Field(100_000, ge=1)  # generator epochs = ceil(budget / poison images)
    attack_rate: float = Field(0.05, gt=0, le=1)  # poisoned share of each target-class real batch
    tau: float = Field(0.2, gt=0)
    emd: float = Field(0.0, ge=0)
    contrastive: float = Field(0.65, ge=0)
    l2: float = Field(0.0, ge=0)
    perceptual: float = Field(0.0, ge=0)  # on 1 - SSIM (the releases: LPIPS, which needs a download)
    clip: bool = False  # the releases keep x + delta unclipped; true: every pixel valid
    generator_width: int = Field(16, ge=1)


class InkDropConfig(BoundaryConfig):
    """InkDrop (`attack=inkdrop`): its release's final loss is the contrastive term alone."""


class SneakdoorConfig(BoundaryConfig):
    """SNEAKDOOR (`attack=sneakdoor`): 2.25 EMD + 0.65 contrastive + 1.25 L2 + 1.25 perceptual."""

    emd: float = Field(2.25, ge=0)
    l2: float = Field(1.25, ge=0)
    perceptual: float = Field(1.25, ge=0)


class PoisonedDistillationConfig(Section):
    """Poisoned Distillation (`attack=poisoned_distillation`, attacks/poisoned_distillation.py):
    its release's argparse defaults."""

    surrogate_steps: int = Field(100, ge=1)  # full-batch SGD steps on the received set
    surrogate_lr: float = Field(0.01, gt=0)
    recon_steps: int = Field(200, ge=1)  # Adam steps of model inversion per class
    recon_lr: float = Field(0.1, gt=0)
    alpha: float = Field(0.6, ge=0, le=1)  # the backdoor term's weight; the set's own gets 1 - alpha
    # authors: a 1x1 patch of value 10 in normalised units (far outside [0, 1]); valid: poison.*'s
    # patch (2x2 white by default), clipped
    trigger: Literal["authors", "valid"] = "authors"
    trigger_value: float = 10.0  # normalised units, for trigger=authors
    trigger_size: int = Field(1, ge=1)  # for trigger=authors


class RematchConfig(Section):
    """`distill=rematch` (distill/rematch.py): re-optimise a received synthetic set by gradient
    matching against it, Poisoned Distillation's procedure; its release's values."""

    steps: int = Field(101, ge=1)  # Adam steps on the set per iteration
    lr_img: float = Field(0.1, gt=0)
    batch: int = Field(256, ge=1)  # received images per benign batch
    lr_net: float = Field(0.01, gt=0)
    clip: bool = False  # true: the images stay valid pixels after every step
    # received: victims train as the received set's own distiller has them train (DM's and DSA's
    # with augmentation, IDM's on the expanded set), so CTA compares with the clean run's; plain:
    # plain SGD, as the release evaluates
    victims: Literal["received", "plain"] = "received"


class EvalConfig(Section):
    """Victim training protocol."""

    num_victims: int = Field(10, ge=1)
    epochs: int = Field(300, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    batch: int = Field(256, ge=1)
    every: int = Field(0, ge=0)
    victims: list[str] = Field(default_factory=list)
    test_batch: int = Field(1024, ge=1)
    # also score triggered test images of this one class only, as `asr_source`
    source_class: int | None = Field(None, ge=0)
    # train an architecture's victims together (ddbackdoor.victims; "auto": on CUDA only)
    batched: bool | Literal["auto"] = False


class ExperimentConfig(Section):
    profile: Profile = "quick"
    seed: int = Field(0, ge=0)
    dataset: str = "fashion-mnist-mini"
    data: DataConfig = Field(default_factory=DataConfig)
    network: str = "convnet"
    net: NetConfig = Field(default_factory=NetConfig)
    distill: str = "dc"
    ipc: int = Field(10, ge=1)
    iterations: int = Field(1000, ge=0)
    dc: DCConfig = Field(default_factory=DCConfig)
    dsa: DSAConfig = Field(default_factory=DSAConfig)
    dm: DMConfig = Field(default_factory=DMConfig)
    dd: DDConfig = Field(default_factory=DDConfig)
    kip: KIPConfig = Field(default_factory=KIPConfig)
    mtt: MTTConfig = Field(default_factory=MTTConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, json_schema_extra=RUNTIME)
    log: LogConfig = Field(default_factory=LogConfig, json_schema_extra=RUNTIME)
    attack: str = "doorping"
    poison: PoisonConfig = Field(default_factory=PoisonConfig)
    doorping: DoorpingConfig = Field(default_factory=DoorpingConfig)
    target_patch: TargetPatchConfig = Field(default_factory=TargetPatchConfig)
    seeded: SeededConfig = Field(default_factory=SeededConfig)
    invisible: InvisibleConfig = Field(default_factory=InvisibleConfig)
    relax_trigger: RelaxTriggerConfig = Field(default_factory=RelaxTriggerConfig)
    blend: BlendConfig = Field(default_factory=BlendConfig)
    idm: IDMConfig = Field(default_factory=IDMConfig)
    inkdrop: InkDropConfig = Field(default_factory=InkDropConfig)
    sneakdoor: SneakdoorConfig = Field(default_factory=SneakdoorConfig)
    poisoned_distillation: PoisonedDistillationConfig = Field(default_factory=PoisonedDistillationConfig)
    rematch: RematchConfig = Field(default_factory=RematchConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    device: str = "auto"
    # true: the same bits on any x86-64 host with AVX2 (ddbackdoor.reproducible: pinned CPU kernels,
    # one thread, no torch.compile, deterministic CUDA algorithms); false (the default): the host's
    # fastest kernels and `threads`, the same bits only on the same host with the same thread count
    reproducible: bool = False
    # an attacked run draws what the clean run of its seed draws, but for the attack's own stream
    # (docs/reproducibility.md, "Paired runs"); false: one stream, the attack's draws first
    paired: bool = True
    # CPU threads when reproducible=false (0: torch's choice); a reproducible run computes with one
    threads: int = Field(0, ge=0, json_schema_extra=RUNTIME)
    # keep freed CPU memory in the heap (glibc; bit-identical; ddbackdoor.allocator)
    retain_freed_memory: bool = Field(True, json_schema_extra=RUNTIME)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu") and not value.startswith("cuda") and value != "mps":
            raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
        return value
