"""Probe (not part of the package): NAIVEATTACK whose poisoned images make up SHARE of every
target-class real batch during distillation, by patching RealPool.sample. One run per call:

    python tools/oversample_probe.py 0.5 runs/probe-s05-seed3 attack=naive seed=3
"""

import json
import sys

from ddbackdoor.reproducible import pin_environment

pin_environment()  # before torch computes anything, as `ddbackdoor run` does

import torch  # noqa: E402

from ddbackdoor.attacks import base as attack_base  # noqa: E402
from ddbackdoor.distill import base as distill_base  # noqa: E402
from ddbackdoor.experiment import run_experiment  # noqa: E402
from ddbackdoor.resolve import build_config  # noqa: E402


def patch(share: float) -> None:
    prepare, sample = attack_base.PatchAttack.prepare, distill_base.RealPool.sample

    def remembering_prepare(self, pool):
        prepare(self, pool)
        pool.poisoned, pool.poison_target = self.poison_index, self.config.poison.target

    def oversampling_sample(self, c, n, generator):
        poisoned = getattr(self, "poisoned", None)
        if poisoned is None or c != self.poison_target or poisoned.numel() == 0:
            return sample(self, c, n, generator)
        k = min(poisoned.numel(), round(share * n))
        clean = self.by_class[c][~torch.isin(self.by_class[c], poisoned)]
        picked = poisoned[torch.randperm(poisoned.numel(), generator=generator)[:k]]
        rest = clean[torch.randperm(clean.numel(), generator=generator)[: n - k]]
        return self.images[torch.cat([picked, rest])]

    attack_base.PatchAttack.prepare = remembering_prepare
    distill_base.RealPool.sample = oversampling_sample


def main() -> None:
    share, out, overrides = float(sys.argv[1]), sys.argv[2], sys.argv[3:]
    patch(share)
    metrics = run_experiment(build_config({"profile": "quick"}, overrides), out, progress=False)
    print(json.dumps({"share": share, "cta": metrics["cta"], "asr": metrics["asr"]["values"]}))


if __name__ == "__main__":
    main()
