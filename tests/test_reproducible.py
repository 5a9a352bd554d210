"""Reproducible mode: pinned kernels give the same bits on any x86-64 host with AVX2.

The fingerprints below were computed on an AVX-512 host (AMD EPYC) with the kernels pinned; an
AVX2-only host and an Intel one must compute the same ones (before one-image products were kept
off MKL's matrix-vector branch, an Intel Sapphire Rapids host gave other DOORPING fingerprints).
The subprocess tests show on the host at hand that the pinned runs ignore the kernel choices a
host would make, and that unpinned runs do not, so the fingerprint test is known to bite.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from ddbackdoor import reproducible
from ddbackdoor.cli import main
from ddbackdoor.errors import ConfigError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.fingerprint import CASES, fingerprint_case
from ddbackdoor.models import model_names
from ddbackdoor.resolve import build_config

# `ddbackdoor fingerprint` (reproducible mode), torch 2.14.1. The attacked cases were recorded
# again when attacks got a random stream of their own (`paired`); the -unpaired cases hold the
# fingerprints the same runs had before, to the bit.
EXPECTED = {
    "dc-clean": "6634c5df148ca3d9835d605cffd886424c7d46f21331028dfd9cad143592d51d",
    "dc-naive": "636fee5cd7d58df2fb591dae9e80ed96e47a1ae3dd76a6fc99b2c4c095268ae8",
    "dc-doorping": "3d97a1c85a732a84b272c2074007a013bab3433b2b514cbd86e0ccc7e280ae57",
    "dc-doorping-unclipped": "7acd32a86e931d4fe40f561dae784ab1fb96919cae6ad27edc3805c6905b0a6f",
    "dsa-doorping": "f3f8075620d0e15e3241a3879a148b8e14f3aea3af7eb576f4102e4ffaa49801",
    "dc-naive-unpaired": "fc2aa3e3e14e25acf2ce1d355b4b5b55bd9a321cf07df3d0ae6a8035b4d6ca38",
    "dsa-doorping-unpaired": "1d15ef8ddbd7d32ef850774232db3331d514cbc51bb83ff5d570718edb3aaf9b",
}

# Kernel choices a host makes that reproducible mode does not pin but bypasses or overrides:
# oneDNN's and MKL's instruction sets, and a user's own ATen capability.
LOWERED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "default"}
RAISED = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO"}


def fingerprint_in_subprocess(cases: list[str], env: dict[str, str], *flags: str) -> dict[str, str]:
    """`ddbackdoor fingerprint` in a fresh process whose environment is the host's plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in reproducible.PINNED_ENV}
    out = subprocess.run(
        [sys.executable, "-m", "ddbackdoor", "fingerprint", *flags, *cases],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return dict(line.split() for line in out.stdout.splitlines())


def test_every_case_has_a_recorded_fingerprint():
    assert set(EXPECTED) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_pinned_runs_reproduce_the_recorded_fingerprints(case):
    assert fingerprint_case(case) == EXPECTED[case]


@pytest.mark.parametrize("host", [LOWERED, RAISED], ids=["lowered", "raised"])
def test_pinned_runs_ignore_the_hosts_kernel_choices(host):
    cases = ["dc-clean", "dc-doorping-unclipped"]
    assert fingerprint_in_subprocess(cases, host) == {c: EXPECTED[c] for c in cases}


def test_the_fingerprint_bites_when_the_kernels_change():
    """Unpinned, with kernels chosen explicitly (ATen without SIMD, oneDNN on, MKL at AVX2: choices
    every AVX2 host can make, none of them the pinned ones), the same run gives other bits, so the
    fingerprint tests above would notice a pin that stopped holding."""
    lowered = fingerprint_in_subprocess(["dc-doorping-unclipped"], LOWERED, "--unpinned")
    assert lowered["dc-doorping-unclipped"] != EXPECTED["dc-doorping-unclipped"]


def test_a_run_records_its_pinned_kernels(tmp_path):
    config = build_config({"profile": "smoke"}, ["attack=none", "iterations=1", "reproducible=true"])
    run_experiment(config, tmp_path, progress=False)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["reproducible"] is True
    kernels = saved["provenance"]["kernels"]
    assert kernels["aten_cpu_capability"] == "AVX2"
    assert kernels["mkl_cbwr"] == reproducible.EXPECTED_MKL_CBWR
    assert (kernels["mkldnn"], kernels["nnpack"], kernels["threads"]) == (False, False, 1)
    assert kernels["env"] == reproducible.PINNED_ENV


def test_pinned_kernels_restore_the_process_settings():
    torch.set_num_threads(2)
    with reproducible.pinned_kernels(True, 0):
        assert torch.get_num_threads() == 1 and not torch.backends.mkldnn.enabled
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_unpinned_process_is_refused_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    code = main(["run", "profile=smoke", "iterations=1", "reproducible=true", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "reproducible=true needs ATen's CPU kernels pinned to AVX2, but this process runs AVX512" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mkl_must_read_back_the_pinned_mode(monkeypatch):
    monkeypatch.setattr(reproducible, "mkl_cbwr", lambda: 2)  # AUTO: the host chooses again
    with pytest.raises(reproducible.ReproducibilityError, match="MKL reads back mode 2"):
        reproducible.check_pinned()


def test_compiling_cannot_be_reproducible():
    with pytest.raises(ConfigError, match="dc.compile=true cannot be reproducible"):
        build_config({"profile": "smoke"}, ["dc.compile=true", "reproducible=true"])
    assert build_config({"profile": "smoke"}, ["dc.compile=true"]).dc.compile is True


@pytest.mark.parametrize(
    ("items", "file_text", "wanted"),
    [
        ([], None, False),  # fast by default
        (["reproducible=true"], None, True),
        (["seed=1", "reproducible=yes"], None, True),
        (["reproducible=true"], "reproducible: false\n", True),  # overrides win over the file
        (["reproducible=false"], "reproducible: true\n", False),
        ([], "reproducible: true\n", True),
        ([], "[not a mapping", False),  # the config's own validation reports it later
    ],
)
def test_the_cli_knows_before_importing_torch_whether_to_pin(tmp_path, items, file_text, wanted):
    if file_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(file_text)
        items = [str(path), *items]
    assert reproducible.requested(items) is wanted


def test_a_default_that_pins_yields_only_to_an_explicit_false():
    """The demo pins unless told otherwise; a run resumes in the mode its directory records."""
    assert reproducible.requested([], default=True) is True
    assert reproducible.requested(["seed=3"], default=True) is True
    assert reproducible.requested(["reproducible=false"], default=True) is False


def test_pin_environment_sets_every_pin():
    env: dict[str, str] = {"ATEN_CPU_CAPABILITY": "avx512", "PATH": "/bin"}
    reproducible.pin_environment(env)
    assert env == {**reproducible.PINNED_ENV, "PATH": "/bin"}


# One image through every registered model, forward and backward, with MKL printing its calls.
ONE_IMAGE = """
import torch
from ddbackdoor.models import create_model, model_names
torch.manual_seed(0)
for name in model_names():
    net = create_model(name, 3, 10, image_size=32)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    net(x).square().sum().backward()
    print("model", name, flush=True)
"""


def test_one_image_runs_no_single_row_blas_product():
    """A one-row GEMM takes MKL's matrix-vector branch, which the pins do not hold for (the
    Intel/AMD disagreement of DOORPING's trigger update): no model may hand MKL one."""
    env = {**os.environ, **reproducible.PINNED_ENV, "MKL_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", ONE_IMAGE], env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    calls = [line.split("(")[1].split(")")[0].split(",") for line in out.splitlines() if "GEMM(" in line]
    assert calls, "MKL_VERBOSE printed no GEMM call: the test cannot see MKL"
    assert out.count("model ") == len(model_names())
    single_row = [call[:5] for call in calls if "1" in call[2:5]]
    assert not single_row, single_row


def test_default_mode_runs_repeat_on_the_same_host_with_the_same_threads(tmp_path):
    """Fast by default: two fresh processes without the pins (the host's own ATen and MKL kernels,
    oneDNN on, two threads) give the same synthetic set twice."""
    from ddbackdoor.artifacts import load_tensors

    env = {key: value for key, value in os.environ.items() if key not in reproducible.PINNED_ENV}
    command = [sys.executable, "-m", "ddbackdoor", "run", "profile=smoke", "attack=doorping", "threads=2"]
    for name in ("a", "b"):
        done = subprocess.run(
            [*command, "--out", str(tmp_path / name)], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
    a, _ = load_tensors(tmp_path / "a" / "synthetic.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "synthetic.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("a", "b")]
    assert metrics[0]["asr"]["values"] == metrics[1]["asr"]["values"]
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    kernels = saved["provenance"]["kernels"]
    assert saved["reproducible"] is False and saved["provenance"]["threads"] == 2
    assert kernels["mkldnn"] is True and kernels["env"]["ATEN_CPU_CAPABILITY"] is None


def test_a_run_begun_in_reproducible_mode_resumes_in_it(tmp_path):
    """The same command, which no longer says `reproducible`, resumes an older pinned run as it was."""
    from ddbackdoor.experiment import run_experiment

    pinned = build_config({"profile": "smoke"}, ["attack=none", "iterations=1", "reproducible=true"])
    first = run_experiment(pinned, tmp_path / "run", progress=False)
    again = run_experiment(
        build_config({"profile": "smoke"}, ["attack=none", "iterations=1"]), tmp_path / "run"
    )
    assert again == first  # reported as the finished pinned run, not refused
