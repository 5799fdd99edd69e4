"""Crash safety (spo_tabular.io): atomic writes leave the old file or the new one, never half; truncated or
corrupted files give a ValueError naming the file; a writer killed with SIGKILL and restarted resumes
from the last complete file; provenance hashes are canonical and stable across processes."""
import dataclasses
import datetime
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import spo_tabular
from spo_tabular import io as sio

IO_PATH = Path(sio.__file__)


def leftovers(directory: Path):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def frame():
    return pd.DataFrame({"claim": ["Theorem 1, # and \"quotes\"", "DPO"], "alpha": [0.5, 2.0],
                         "measured": [1.5e-17, float("nan")], "passed": [True, False], "seed": [0, 1]})


# --------------------------------------------------------------------------- round trips

def test_text_and_bytes_round_trip_and_leave_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "out.txt"                       # parent directories are created
    assert sio.atomic_write_text(target, "α = 1\nβ = 0\n") == target
    assert target.read_text(encoding="utf-8") == "α = 1\nβ = 0\n"
    sio.atomic_write_bytes(target, b"\x00\xff")
    assert target.read_bytes() == b"\x00\xff"
    assert leftovers(target.parent) == []


def test_json_round_trip_is_exact_with_nan_nested_values_and_int_keys(tmp_path):
    obj = {"alpha": 0.1, "tv": float("nan"), "inf": -math.inf, "rows": [{"n": 3, "ok": True}], 10: "ten", 2: "two",
           "tuple": (1, 2), "tiny": 5e-324}
    sio.atomic_write_json(tmp_path / "r.json", obj)
    back = sio.read_json(tmp_path / "r.json")
    assert math.isnan(back.pop("tv")) and back["inf"] == -math.inf and back["tiny"] == 5e-324
    assert back["rows"] == [{"n": 3, "ok": True}] and back["10"] == "ten" and back["tuple"] == [1, 2]
    assert sio.JSON_CHECKSUM_KEY not in back
    # Plain JSON: any other reader can open it (the checksum is one more key).
    assert json.loads((tmp_path / "r.json").read_text())["alpha"] == 0.1


def test_csv_round_trip_with_provenance_columns_keeps_per_row_seeds(tmp_path, frame):
    prov = sio.provenance({"experiment": "demo", "alpha": [0.5, 2.0]}, seed=7)
    sio.atomic_save_csv(frame, tmp_path / "rows.csv", provenance=prov)
    back = sio.read_csv(tmp_path / "rows.csv", required_columns=["claim", "config_hash"])
    assert back["claim"].tolist() == frame["claim"].tolist()
    assert back["seed"].tolist() == [0, 1]                      # the frame's own seed column wins
    assert set(back["config_hash"]) == {prov["config_hash"]} and set(back["package_version"]) == {spo_tabular.__version__}
    assert back["alpha"].tolist() == [0.5, 2.0] and math.isnan(back["measured"][1]) and back["measured"][0] == 1.5e-17
    # pandas alone reads it too, skipping the sha256 line.
    plain = pd.read_csv(tmp_path / "rows.csv", skipfooter=1, engine="python")
    assert plain["claim"].tolist() == frame["claim"].tolist()


def test_checkpoint_round_trip(tmp_path):
    state = {"logits": torch.randn(3, 4, dtype=torch.float64), "step": 12}
    sio.atomic_save_torch(state, tmp_path / "ckpt.pt")
    back = sio.load_torch(tmp_path / "ckpt.pt")
    assert back["step"] == 12 and torch.equal(back["logits"], state["logits"])


def test_new_files_get_the_usual_permissions_and_replaced_files_keep_theirs(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    target = tmp_path / "a.txt"
    sio.atomic_write_text(target, "1")
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(target, 0o640)
    sio.atomic_write_text(target, "2")
    assert target.stat().st_mode & 0o777 == 0o640 and target.read_text() == "2"


# --------------------------------------------------------------------------- failures while writing

def test_a_crash_before_the_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    sio.atomic_write_json(target, {"version": 1})

    def crash(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        sio.atomic_write_json(target, {"version": 2})
    monkeypatch.undo()
    assert sio.read_json(target) == {"version": 1} and leftovers(tmp_path) == []


def test_an_object_that_cannot_be_serialised_leaves_the_old_file(tmp_path):
    target = tmp_path / "r.json"
    sio.atomic_write_json(target, {"version": 1})
    with pytest.raises(TypeError, match="obj must be JSON-serialisable"):
        sio.atomic_write_json(target, {"version": 2, "fn": print})
    assert sio.read_json(target) == {"version": 1} and leftovers(tmp_path) == []


def test_bad_arguments_of_the_writers(tmp_path, frame):
    with pytest.raises(TypeError, match="data must be bytes"):
        sio.atomic_write_bytes(tmp_path / "x", "text")
    with pytest.raises(TypeError, match="text must be a str"):
        sio.atomic_write_text(tmp_path / "x", b"bytes")
    with pytest.raises(TypeError, match="frame must be a pandas DataFrame"):
        sio.atomic_save_csv({"a": [1]}, tmp_path / "x.csv")
    with pytest.raises(ValueError, match="reserved key '_sha256'"):
        sio.atomic_write_json(tmp_path / "x.json", {"_sha256": "0"})
    with pytest.raises(ValueError, match="to carry provenance"):
        sio.atomic_write_json(tmp_path / "x.json", [1, 2], provenance={"seed": 0})
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- truncated and corrupted files

def test_every_truncation_of_a_csv_file_is_refused_naming_the_file(tmp_path, frame):
    full = tmp_path / "rows.csv"
    sio.atomic_save_csv(frame, full)
    raw = full.read_bytes()
    cut = tmp_path / "cut.csv"
    for length in range(len(raw)):
        cut.write_bytes(raw[:length])
        with pytest.raises(ValueError, match=f"^{cut}: (empty file|truncated)"):
            sio.read_csv(cut)


def test_every_truncation_of_a_json_file_is_refused_naming_the_file(tmp_path):
    full = tmp_path / "r.json"
    sio.atomic_write_json(full, {"claim": "Theorem 1", "measured": [1e-17, 2e-16], "passed": True})
    text = full.read_bytes().rstrip()                     # dropping only the final newline loses nothing
    cut = tmp_path / "cut.json"
    for length in range(len(text)):
        cut.write_bytes(text[:length])
        with pytest.raises(ValueError, match=f"^{cut}: (empty file|truncated or corrupted JSON)"):
            sio.read_json(cut)


def test_every_truncation_of_a_checkpoint_is_refused_naming_the_file(tmp_path):
    full = tmp_path / "ckpt.pt"
    sio.atomic_save_torch({"w": torch.arange(6.0)}, full)
    raw = full.read_bytes()
    cut = tmp_path / "cut.pt"
    for length in range(0, len(raw), 7):
        cut.write_bytes(raw[:length])
        with pytest.raises(ValueError, match=f"^{cut}: "):
            sio.load_torch(cut)


def test_a_changed_byte_anywhere_is_refused(tmp_path, frame):
    """Corruption that still parses (a digit changed) is caught by the sha256, not only broken syntax."""
    rng = np.random.default_rng(0)
    for name, write, read in (("rows.csv", lambda p: sio.atomic_save_csv(frame, p), sio.read_csv),
                              ("ckpt.pt", lambda p: sio.atomic_save_torch({"w": torch.arange(50.0)}, p), sio.load_torch)):
        path = tmp_path / name
        write(path)
        raw = path.read_bytes()
        for position in rng.choice(len(raw), size=40, replace=False):
            damaged = bytearray(raw)
            damaged[position] ^= 0x01
            path.write_bytes(bytes(damaged))
            with pytest.raises(ValueError, match=f"^{path}: "):
                read(path)


def test_a_json_value_changed_in_place_is_refused(tmp_path):
    path = tmp_path / "r.json"
    sio.atomic_write_json(path, {"max_tv": 1.25e-17, "passed": True})
    path.write_text(path.read_text().replace("1.25e-17", "1.35e-17"))
    with pytest.raises(ValueError, match=f"^{path}: corrupted JSON: its content does not match"):
        sio.read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8"):
        sio.read_json(path)


def test_empty_missing_and_foreign_files(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty file"):
        sio.read_csv(empty)
    with pytest.raises(FileNotFoundError):
        sio.read_json(tmp_path / "missing.json")
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a CSV file written by spo_tabular"):
        sio.read_csv(foreign)
    assert sio.read_csv(foreign, verify=False)["b"].tolist() == [2]
    with pytest.raises(ValueError, match=r"missing columns \['seed'\]"):
        sio.read_csv(foreign, verify=False, required_columns=["a", "seed"])
    broken = tmp_path / "broken.csv"
    broken.write_text('a,b\n1,"2\n')
    with pytest.raises(ValueError, match=f"^{broken}: truncated or corrupted CSV"):
        sio.read_csv(broken, verify=False)


# --------------------------------------------------------------------------- SIGKILL and restart

WRITER = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("spo_io", sys.argv[1])
    sio = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sio)          # io.py alone: no torch import, a quick start
    path = sys.argv[2]
    try:
        version = sio.read_json(path)["version"] + 1     # resume after the last complete write
    except FileNotFoundError:
        version = 0
    print(version, flush=True)
    while True:
        sio.atomic_write_json(path, {"version": version, "payload": [version] * 20000})
        version += 1
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_a_writer_killed_with_sigkill_resumes_from_a_complete_file(tmp_path):
    path = tmp_path / "state.json"
    rng = np.random.default_rng(1)
    last = -1
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(IO_PATH), str(path)], stdout=subprocess.PIPE,
                                 text=True)
        start = int(child.stdout.readline())
        assert start == last + 1                          # restarted exactly after the last complete write
        time.sleep(rng.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        state = sio.read_json(path)                       # never half a file
        assert state["payload"] == [state["version"]] * 20000
        assert state["version"] >= start
        last = state["version"]
    assert last >= 4


# --------------------------------------------------------------------------- provenance

@dataclasses.dataclass(frozen=True)
class Config:
    alpha: float
    n_actions: int
    losses: tuple
    seed: int


def test_config_hash_is_the_sha256_of_the_canonical_json():
    expected = hashlib.sha256(b'{"alpha":0.5,"losses":["spo","dpo"],"n_actions":4,"seed":3}').hexdigest()
    assert sio.config_hash(Config(0.5, 4, ("spo", "dpo"), 3)) == expected
    assert sio.config_hash({"seed": 3, "n_actions": 4.0, "losses": ["spo", "dpo"], "alpha": np.float64(0.5)}) == expected
    assert sio.config_hash({"alpha": 0.5}) != sio.config_hash({"alpha": 0.50000001})
    assert sio.canonical_json({"x": [float("nan"), np.int64(2), 1e300, Path("a/b")]}) == '{"x":["nan",2,1e+300,"a/b"]}'


def test_config_hash_is_stable_across_processes():
    config = {"alpha": 0.1, "grid": [1, 2.5], "name": "sweep", "seed": 0}
    code = f"from spo_tabular.io import config_hash; print(config_hash({config!r}))"
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.stdout.strip() == sio.config_hash(config)


def test_provenance_records_seed_hash_version_and_time():
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    prov = sio.provenance(Config(1.0, 3, (), 42))
    assert prov["seed"] == 42 and prov["package_version"] == spo_tabular.__version__
    assert prov["torch_version"] == torch.__version__ and prov["numpy_version"] == np.__version__
    assert len(prov["config_hash"]) == 64
    assert datetime.datetime.fromisoformat(prov["created_at"]) >= before
    assert sio.provenance({"alpha": 1.0}, seed=np.int64(5))["seed"] == 5
    assert sio.provenance({"alpha": 1.0})["seed"] is None


def test_configs_without_a_canonical_form_are_refused_naming_the_key():
    with pytest.raises(TypeError, match=r"config\['fn'\] has type function"):
        sio.config_hash({"fn": lambda x: x})
    with pytest.raises(TypeError, match="config keys must be str"):
        sio.config_hash({1: "a"})


def test_cli_json_results_record_their_provenance(capsys):
    from spo_tabular.cli import main
    records = []
    for argv in (["theorem1", "--seed", "3"], ["theorem1", "--seed", "3"], ["theorem1", "--seed", "3", "--alpha", "2"]):
        main([*argv, "--json", "--n-contexts", "2", "--n-actions", "3"])
        records.append(json.loads(capsys.readouterr().out)["provenance"])
    assert records[0]["seed"] == 3 and records[0]["package_version"] == spo_tabular.__version__
    assert records[0]["config_hash"] == records[1]["config_hash"] != records[2]["config_hash"]
    main(["check", "--loss", "dpo", "--json", "--n-contexts", "2", "--n-actions", "3", "--seed", "5"])
    assert json.loads(capsys.readouterr().out)["provenance"]["seed"] == 5


def test_the_resume_example_of_docs_robustness_runs(tmp_path):
    text = (Path(__file__).resolve().parents[1] / "docs" / "robustness.md").read_text()
    block = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(block, "docs/robustness.md", "exec"), namespace)
    path = tmp_path / "ckpt.pt"
    assert namespace["train"](path, 3)["step"] == 3
    assert namespace["train"](path, 5)["step"] == 5          # resumed from step 3, not from 0
    assert sio.load_torch(path)["step"] == 5
