import os

import pytest

from ddbackdoor.reproducible import pin_environment

# Under `make test`'s pytest-xdist processes, each process and every run it starts gets its share
# of the cores (one thread each on 2 cores): with two threads each, four busy threads on two cores
# stall each other in OpenMP's waits (a CI run that did so had run a third of the tests
# after 38 minutes). Set before torch is imported; a thread count the caller set stays.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("MKL_NUM_THREADS", _share)

# Runs default to reproducible mode, which needs the kernel pins before torch computes anything
# (the `ddbackdoor` command sets them the same way).
pin_environment()

import tempfile  # noqa: E402

# Tests never use the network: data.download=auto stays offline, and a dataset not given a root is
# looked for in an empty directory of the test session's (never in the user's cache). Subprocesses
# inherit both.
os.environ["DDBACKDOOR_OFFLINE"] = "1"
os.environ["DDBACKDOOR_DATA"] = tempfile.mkdtemp(prefix="ddbackdoor-test-data-")

from collections.abc import Iterator  # noqa: E402

import torch  # noqa: E402
from helpers import host_independent_kernels  # noqa: E402


@pytest.fixture
def host_independent() -> Iterator[None]:
    """`host_independent_kernels` around one test (the defense modules use it for every test)."""
    with host_independent_kernels():
        yield


@pytest.fixture(autouse=True)
def _fixed_threads():
    """Tests run on 2 cores; pin threads so timings and results stay stable."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def badnets():
    """The defenses' sanity setting, built once per session (about 40 s on one core).

    A ConvNet (width 16) trained directly on fashion-mnist-mini (6,000 / 1,000
    images at 28x28) with 3% BadNets poisoning (180 images: about a quarter of the target class,
    the minority the data-level defenses assume): 3x3 white patch bottom-right,
    target class 0. Returns (model, DefenseData); the data-level defenses
    screen the poisoned training set under the name "poisoned_real".
    """
    from ddbackdoor.attacks import NaiveAttack
    from ddbackdoor.data import load_dataset
    from ddbackdoor.defenses import DefenseData, LabelledImages
    from ddbackdoor.defenses.base import clean_subset, fine_tune
    from ddbackdoor.distill import RealPool
    from ddbackdoor.evaluate import EvalSets
    from ddbackdoor.models import create_model
    from ddbackdoor.resolve import build_config

    with host_independent_kernels():  # one thread: the machine is shared, and results match across hosts
        overrides = ["attack=naive", "poison.portion=0.03", "poison.trigger_size=3", "data.image_size=28"]
        config = build_config({"profile": "smoke"}, overrides)
        train, test = load_dataset("fashion-mnist-mini", image_size=28)
        attack = NaiveAttack(config, train, torch.Generator().manual_seed(0))
        pool = RealPool(train.normalize(train.images), train.labels.clone(), train.num_classes)
        attack.prepare(pool)
        poison = torch.zeros(len(train), dtype=torch.bool)
        poison[attack.poison_index] = True
        torch.manual_seed(0)
        model = create_model("convnet", 1, 10, 28, width=16)
        fine_tune(model, pool.images, pool.labels, 12, 0.01, 64, torch.Generator().manual_seed(0))
    clean = clean_subset(train.normalize(train.images), train.labels, 0.05, torch.Generator().manual_seed(1))
    data = DefenseData(
        clean=clean,
        tests=EvalSets.build(test, attack.trigger, "cpu"),
        mean=train.mean,
        std=train.std,
        num_classes=train.num_classes,
        trigger=attack.trigger,
        inspect={"poisoned_real": LabelledImages(pool.images, pool.labels, poison)},
        poison_portion=0.03,
    )
    return model, data


# The slowest files (measured with `--durations`), first: `make test` runs two pytest processes
# (pytest-xdist, one file at a time each, in this order), so these start at once and the short
# files fill in around them instead of one of them starting last and running alone.
SLOWEST_FIRST = (
    "test_science.py",
    "test_science_seeded.py",
    "test_defenses_on_distilled_sets.py",
    "test_sweep.py",
    "test_every_distiller.py",
    "test_reproducible.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise
