import json
import statistics

import pytest
import torch
from helpers import pool_of, tiny_data
from test_dc import make_dc

from ddbackdoor.bench import SECTIONS
from ddbackdoor.bench.stacking import load_into
from ddbackdoor.cli import main
from ddbackdoor.distill import DCDistiller
from ddbackdoor.distill.dc import freeze_batchnorm_on_real
from ddbackdoor.models import create_model


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on the shared 2-core machine two OpenMP threads stall each other (conftest restores)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert main(["bench", "--quick", "--threads", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


def timings(section: dict) -> list[dict]:
    """The baseline-vs-fast measurements a section holds (itself, or one per variant)."""
    if "ratio" in section:
        return [section, *(v for v in section.values() if isinstance(v, dict) and "ratio" in v)]
    return [v for v in section.values() if isinstance(v, dict) and "ratio" in v]


def test_quick_bench_reports_what_it_measured(quick_bench):
    """Every section's figures are its own measurements: each time is the median of its repeats,
    each ratio the baseline's time over the fast path's."""
    assert set(SECTIONS) <= set(quick_bench)
    for key in SECTIONS:
        found = timings(quick_bench[key])
        assert found, key
        for t in found:
            for path in ("baseline", "fast"):
                assert t[f"{path}_ms"] == pytest.approx(statistics.median(t[f"{path}_runs_ms"])), (key, path)
            assert t["ratio"] == pytest.approx(t["baseline_ms"] / t["fast_ms"]), key
    assert set(quick_bench["d_dc_iteration"]) == {"ipc10", "ipc50"}
    for result in quick_bench["d_dc_iteration"].values():
        assert result["flops"] > 0 and result["fast_flops_as_counted"] >= result["flops"]
    options = {k: v for k, v in quick_bench["f_options"].items() if isinstance(v, dict)}
    assert set(options) == {"channels_last", "torch_compile", "retained_heap"}  # CUDA adds cudnn/TF32/bf16


def test_quick_bench_paths_agree(quick_bench):
    assert quick_bench["a_matching"]["check"]["within_1e-4"]
    assert quick_bench["a_matching"]["check"]["fast_as_accurate_as_loop"]
    assert quick_bench["b_trigger"]["check"]["pattern_max_abs_diff"] == 0
    assert quick_bench["c_victims"]["check"]["max_abs_diff"] == 0  # the retained heap changes no bit
    assert quick_bench["c_victims"]["check"]["stacked_max_abs_diff"] < 1e-6
    assert quick_bench["e_dd"]["check"]["grad_relative_diff"] < 1e-4


@pytest.mark.parametrize("norm", ["instancenorm", "none", "batchnorm"])
def test_batched_matching_step_moves_the_images_as_the_loop(norm):
    """One full matching step (loss, backward, SGD on the images), both paths, same batches."""
    pool = pool_of(tiny_data())
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=8, depth=2, norm=norm)
    if norm == "batchnorm":
        freeze_batchnorm_on_real(net, pool, 4, torch.Generator().manual_seed(5))
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    for matching in ("loop", "batched"):
        dc: DCDistiller = make_dc(f"dc.matching={matching}")
        dc.start(pool, torch.Generator().manual_seed(0))
        start = dc.images.detach().clone()
        loss = dc.matching_step(net, pool, torch.Generator().manual_seed(1))
        steps.append((loss, dc.images.detach() - start))
    (loop_loss, loop_move), (fast_loss, fast_move) = steps
    assert float(loop_loss) > 0 and float(loop_move.norm()) > 0
    assert float(abs(fast_loss - loop_loss) / loop_loss) < 1e-4
    assert float((fast_move - loop_move).norm() / loop_move.norm()) < 1e-4


def test_module_rebuilt_with_tensors_computes_the_same_as_functional_call():
    torch.manual_seed(0)
    net = create_model("convnet", 1, 4, 16, width=4, depth=1, norm="none")
    weights = {k: v.detach() * 2 for k, v in net.named_parameters()}
    x = torch.randn(3, 1, 16, 16)
    expected = torch.func.functional_call(net, weights, (x,))
    rebuilt = load_into(create_model("convnet", 1, 4, 16, width=4, depth=1, norm="none"), weights)
    assert torch.allclose(rebuilt(x), expected)


def test_sections_are_picked_by_letter_in_the_order_given():
    from ddbackdoor.bench import pick_sections
    from ddbackdoor.errors import ConfigError

    assert pick_sections("d, a,d") == ["d_dc_iteration", "a_matching"]
    assert pick_sections("") == list(SECTIONS)
    with pytest.raises(ConfigError, match="unknown bench section 'z'"):
        pick_sections("a,z")
    assert main(["bench", "--quick", "--sections", "z"]) == 2


def test_a_failing_section_is_recorded_and_the_others_still_run(monkeypatch, tmp_path):
    from ddbackdoor.bench import runner

    def broken(b):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    monkeypatch.setattr(runner, "bench_trigger", broken)
    out = tmp_path / "bench.json"
    result = runner.run_bench("cpu", quick=True, out=out, sections="b,e", progress=lambda _: None)
    assert result["b_trigger"] == {
        "missing": "failed: RuntimeError: CUDA error: an illegal memory access was encountered"
    }
    assert result["e_dd"]["ratio"] > 0
    assert json.loads(out.read_text())["b_trigger"] == result["b_trigger"]


def test_profile_names_both_paths_and_their_top_operators(tmp_path):
    out = tmp_path / "profile.txt"
    assert main(["bench", "--quick", "--threads", "1", "--sections", "e", "--profile", str(out)]) == 0
    text = out.read_text()
    assert "== straightforward (dc.matching=loop, dc.compile=false)" in text
    assert "== fast (dc.matching=loop, dc.compile=true)" in text  # the CPU's fast path
    assert "aten::convolution" in text and text.count("operator calls") == 2
