"""Artifacts: atomic, verified safetensors; pickles refused unless trusted."""

import pytest
import torch

from ddbackdoor.artifacts import describe, load_tensors, save_tensors
from ddbackdoor.cli import main
from ddbackdoor.errors import ArtifactError


@pytest.fixture
def artifact(tmp_path):
    path = tmp_path / "synthetic.safetensors"
    save_tensors(path, {"images": torch.randn(4, 1, 8, 8), "labels": torch.arange(4)}, {"ipc": 2})
    return path


def test_round_trip_keeps_tensors_and_metadata(artifact):
    tensors, metadata = load_tensors(artifact)
    assert tensors["images"].shape == (4, 1, 8, 8) and tensors["labels"].tolist() == [0, 1, 2, 3]
    assert metadata == {"ipc": 2}
    assert not list(artifact.parent.glob(".*"))  # no temp file left behind


def test_a_flipped_bit_in_the_data_fails_the_checksum(artifact):
    raw = bytearray(artifact.read_bytes())
    raw[-5] ^= 0x01
    artifact.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="fails its SHA-256 check"):
        load_tensors(artifact)


def test_a_truncated_file_is_one_clear_error(artifact, capsys):
    artifact.write_bytes(artifact.read_bytes()[:40])
    assert main(["inspect", str(artifact)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(artifact) in err and "Traceback" not in err


def test_inspect_shows_what_the_artifact_holds(artifact, capsys):
    assert main(["inspect", str(artifact)]) == 0
    out = capsys.readouterr().out
    assert "SHA-256 verified" in out and "images: float32 [4, 1, 8, 8]" in out and '"ipc": 2' in out


class Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickles_are_refused_without_trust_and_never_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    import pickle

    path.write_bytes(pickle.dumps(Boom()))
    assert main(["inspect", str(path)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="even with --trust-pickle"):
        describe(path, trust_pickle=True)  # torch's weights_only loader refuses it too
    safe = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, safe)
    assert "w: float32 [2]" in describe(safe, trust_pickle=True)
