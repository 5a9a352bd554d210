"""Profiles: the scale of a run, as data. A profile changes scale only, never the attack's own
settings; each distiller adds its own scale on top (DM's iterations are far cheaper than DC's, DD's
dearer). `ddbackdoor list profiles` prints them; docs/configuration.md explains each."""

from __future__ import annotations

from typing import Any

from .mappings import merge

QUICK: dict[str, Any] = {
    "iterations": 25,
    "net": {"width": 16},
    "dc": {"batch_real": 32, "outer_loop": 5, "inner_loop": 10},
    "eval": {"num_victims": 3, "epochs": 200},
}

# Profiles change scale only, never the attack's own settings (poison, doorping).
PROFILES: dict[str, dict[str, Any]] = {
    # the authors' ConvNet has no normalisation layer: their get_network('ConvNet')
    # takes the constructor default; instance norm belongs to their ConvNetW*/D* variants only
    "paper": {"net": {"norm": "none"}},
    "quick": QUICK,
    # the CPU proving ground (about 6 minutes a run here; docs/results-medium.md): quick at width
    # 32, with DC starting from real images (the DSA authors' init; DC's default is noise, which
    # 25 iterations at lr_img 0.1 barely leave). There a plainly visible valid trigger (8x8
    # checkerboard on 10% of the images) reaches ASR >= 0.9 in 13 of 15 victims (seeds 0-4); at
    # quick far fewer. init is not scale: the docs name it as this profile's one deviation.
    "medium": {**QUICK, "net": {"width": 32}, "dc": {**QUICK["dc"], "init": "real"}},
    "smoke": {
        "iterations": 2,
        "ipc": 2,
        "net": {"width": 8},
        "dc": {"batch_real": 16, "outer_loop": 2, "inner_loop": 2},
        "eval": {"num_victims": 2, "epochs": 5},
        "doorping": {"max_steps": 20},
        "relax_trigger": {"steps": 3, "per_class": 5},
        "seeded": {"images": 1},  # of IPC 2
        "inkdrop": {"surrogate_epochs": 1, "budget": 200, "golden": 16},
        "sneakdoor": {"surrogate_epochs": 1, "budget": 200, "golden": 16},
    },
}

PROFILE_SUMMARIES: dict[str, str] = {
    "paper": "the authors' settings: 1000 iterations, ConvNet width 128 without normalisation, "
    "10 victims x 300 epochs (a GPU's work)",
    "quick": "CPU scale: 25 iterations, ConvNet width 16, real batch 32, 3 victims x 200 epochs "
    "(about 3 minutes a DC run on one core)",
    "medium": "quick at ConvNet width 32, DC starting from real images (about 6 minutes a run on one core)",
    "smoke": "seconds-long runs for tests: 2 iterations, IPC 2, width 8, 2 victims x 5 epochs",
}

# DM: 20000 cheap iterations and 1000 augmented victim epochs (authors' main_DM.py).
DM_SCALE: dict[str, dict[str, Any]] = {
    "paper": {"iterations": 20000, "eval": {"epochs": 1000}},
    "quick": {"iterations": 300, "dm": {"batch_real": 64}},
    "smoke": {"dm": {"batch_real": 16, "trigger_every": 1, "trigger_epochs": 2}},
}

# Per-distiller scale on top of PROFILES (DM iterations are far cheaper than DC's, DD's dearer).
DISTILLER_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "dc": {},
    # DSA: the authors' README runs DSA with --init real (their argparse default is noise), and
    # evaluates augmented victims for 1000 epochs. init is not scale, so every profile sets it.
    "dsa": {
        "paper": {"dc": {"init": "real"}, "eval": {"epochs": 1000}},
        "quick": {"dc": {"init": "real"}},
        "smoke": {"dc": {"init": "real"}},
    },
    "dm": DM_SCALE,
    # RDM-DC is DM with a calibrated real mean: DM's scale
    "rdm_dc": DM_SCALE,
    # IDM: the release's 20000 iterations and 1000 augmented victim epochs; quick as DM's quick
    "idm": {
        "paper": {"iterations": 20000, "eval": {"epochs": 1000}},
        "quick": {"iterations": 300, "idm": {"batch_real": 64, "batch_train": 64}},
        "smoke": {
            "idm": {"batch_real": 16, "batch_train": 16, "train_steps": 2, "net_every": 1, "trigger_every": 1}
        },
    },
    # rematch: a finished set re-optimised, at the release's scale everywhere (11 iterations of 101
    # Adam steps on the set itself: seconds to minutes on a CPU)
    "rematch": {
        "paper": {"iterations": 11},
        "quick": {"iterations": 11},
        "smoke": {"rematch": {"steps": 3}, "poisoned_distillation": {"surrogate_steps": 5, "recon_steps": 5}},
    },
    # DD: the authors' DD ConvNet has no norm layer (not scale, so every profile sets it); 10 steps
    # x 10 images per class; 400 epochs of 59 real batches of 1024 (Fashion-MNIST; CIFAR-10: 19600).
    # quick (~2.5 min on one core) is too short for DD to leave chance accuracy: the lrs start at
    # 0.001 and grow about 1% per iteration (GPU runs reached CTA 0.44 at 500, 0.48 at 1000).
    "dd": {
        "paper": {"ipc": 100, "iterations": 23600, "net": {"norm": "none"}},
        "quick": {"iterations": 150, "net": {"norm": "none"}, "dd": {"batch_real": 256}},
        "smoke": {
            "net": {"norm": "none"},
            "dd": {"distill_steps": 2, "distill_epochs": 2, "batch_real": 32},
        },
    },
    # KIP's own scale (its runs: a few thousand Adam steps); victims are the MLP the kernel
    # describes, a choice of evaluation, not of scale, so every profile sets it
    "kip": {
        "paper": {"iterations": 1000, "network": "mlp"},
        "quick": {"iterations": 200, "network": "mlp"},
        "smoke": {"network": "mlp", "kip": {"batch_real": 8}},
    },
    # MTT quick: 2 experts of 6 epochs on the bundled 6,000 images, 10 unrolled steps, 100 iterations
    "mtt": {
        "paper": {"iterations": 5000},
        "quick": {
            "iterations": 100,
            "mtt": {"num_experts": 2, "expert_epochs_total": 6, "max_start_epoch": 3, "syn_steps": 10},
        },
        "smoke": {
            "mtt": {
                "num_experts": 1,
                "expert_epochs_total": 2,
                "expert_epochs": 1,
                "max_start_epoch": 1,
                "syn_steps": 2,
                "batch_train": 512,
            }
        },
    },
}

# A profile that takes another's per-distiller scale: `medium` changes the network and the DC
# start only, and each distiller keeps its quick scale there.
DISTILLER_SCALE_OF = {"medium": "quick"}


def profile_defaults(profile: str, distill: object) -> dict[str, Any]:
    """The profile's defaults with the distiller's scale for it on top (nested keys)."""
    scale = DISTILLER_PROFILES.get(distill, {}) if isinstance(distill, str) else {}
    return merge(PROFILES[profile], scale.get(DISTILLER_SCALE_OF.get(profile, profile), {}))


# Authors' (outer_loop, inner_loop) by images per class.
DC_LOOPS_BY_IPC = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """The authors' outer/inner schedule; other IPCs take the nearest smaller entry."""
    keys = [k for k in sorted(DC_LOOPS_BY_IPC) if k <= ipc]
    return DC_LOOPS_BY_IPC[keys[-1]]
