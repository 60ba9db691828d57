"""Data and config files cannot reach outside themselves, and small files cannot cost large machines.

Each attack of issue 18 ("HDF5 can read host files", "Small files, large damage") is a file built
here. The commands run as users run them: ``sati ...`` in a child process that may use at most
1 GiB of address space and 30 s of CPU time (``RLIMIT_AS``, ``RLIMIT_CPU``), so an allocation of
gigabytes, a crash or a minute of work fails the test (exit -11: SIGSEGV, -24: the CPU limit, 1: a
traceback) where a refusal is one ``error:`` line naming the file, and exit status 2.
"""

from __future__ import annotations

import os
import pickle
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from sati.cli import main
from sati.data.h5format import SplitArrays, content_checksum, write_dataset
from sati.data.synth import generate, write_synthetic
from sati.ingest.prepare import pretokenize
from sati.pretrained import load_tokenizer
from sati.testing.pipelines import small_pipeline
from tests.source_files import misa_rows, mmsa_split, write_csd
from tests.test_safe_pickle import _reconstruct, _Reduce

MEMORY_LIMIT = 1 << 30  # bytes of address space the command may use
CPU_LIMIT_S = 30  # seconds of CPU time the command may use


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_LIMIT_S, CPU_LIMIT_S))


def sati(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real ``sati`` command, in a child process under the memory and CPU limits."""
    return subprocess.run(
        [sys.executable, "-m", "sati.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        preexec_fn=_limited,
        timeout=600,  # a safety net only: the CPU limit ends a runaway command first
    )


def assert_refused(run: subprocess.CompletedProcess, *says: str) -> str:
    """Exit 2 with one ``error:`` line that contains each of ``says``, and no traceback; returns the line."""
    report = f"exit {run.returncode} (-11: SIGSEGV, -24: over the CPU limit)\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 2, report
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, report
    for fragment in says:
        assert fragment in errors[0], report
    return errors[0]


def assert_refused_in_process(code: int, err: str, *says: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    for fragment in says:
        assert fragment in errors[0], err


# --- dataset .h5 files ------------------------------------------------------------------------------


def _dataset(tmp_path: Path, name: str = "data.h5") -> Path:
    path = tmp_path / name
    write_synthetic(path, "mosi", seed=0, scale=0.05)
    return path


def _reseal(path: Path) -> None:
    """Rewrite the file's checksums from what plain h5py reads (every link and external file followed),
    as an attacker would: the checksums then match what an unchecked reader returns."""
    with h5py.File(path, "a") as f:
        splits = {
            name: SplitArrays(
                ids=[x.decode() for x in f[name]["ids"][()]],
                text=[x.decode() for x in f[name]["text"][()]],
                labels=f[name]["labels"][()],
                lengths=f[name]["lengths"][()],
                audio=f[name]["audio"][()],
                video=f[name]["video"][()],
            )
            for name in ("train", "valid", "test")
        }
        f.attrs["checksum"] = content_checksum(splits)
        for name, split in splits.items():
            f[name].attrs["checksum"] = content_checksum({name: split})  # one split's checksum


def _pipeline(tmp_path: Path, data: Path, encoder: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    raw = small_pipeline(data, encoder, train={"epochs": 1, "out_dir": str(tmp_path / "run")})
    path.write_text(yaml.safe_dump(raw))
    return path


def test_external_storage_is_refused_by_inspect_and_train(tmp_path, tiny_encoder):
    """A dataset whose train/audio has external storage in a host file: its bytes were read as features,
    and `sati data inspect` called the file OK once its checksums were rewritten."""
    path = _dataset(tmp_path)
    secret = tmp_path / "secret.txt"
    with h5py.File(path, "a") as f:
        shape = f["train/audio"].shape
        need = int(np.prod(shape)) * 4
        secret.write_bytes((b"root:x:0:0:root:/root:/bin/bash\n" * (need // 32 + 1))[:need])
        del f["train/audio"]
        f.create_dataset("train/audio", shape=shape, dtype="f4", external=[(str(secret), 0, need)])
    _reseal(path)
    says = (str(path), "'train/audio' has external storage", str(secret))
    assert_refused(sati("data", "inspect", path, cwd=tmp_path), *says)
    assert_refused(sati("train", _pipeline(tmp_path, path, tiny_encoder), cwd=tmp_path), *says)


def test_csd_with_external_storage_is_refused_by_prepare(tmp_path):
    """A CMU-SDK words .csd whose features (the words) are stored in a host file: `sati data prepare
    --from sdk` copied the file into the new dataset's text, under a checksum that read OK."""
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2" * 6)  # six 16-byte "words"
    folder = tmp_path / "sdk"
    labels = {v: (np.array([[1.0], [-1.0]]), [[0, 3], [3, 6]]) for v in ("a", "b", "c")}
    write_csd(folder / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", labels)
    words = {v: (np.array([[b"good"]] * 6, dtype="S16"), [[k, k + 1] for k in range(6)]) for v in ("a", "b", "c")}
    csd = write_csd(folder / "CMU_MOSI_TimestampedWords.csd", "words", words)
    with h5py.File(csd, "a") as f:
        del f["words/data/a/features"]
        f.create_dataset("words/data/a/features", shape=(6, 1), dtype="S16", external=[(str(secret), 0, 96)])
    (folder / "folds.json").write_text('{"train": ["a"], "valid": ["b"], "test": ["c"]}')
    out = tmp_path / "out.h5"
    run = sati("data", "prepare", "--from", "sdk", folder, "--folds", folder / "folds.json", "--out", out, cwd=tmp_path)
    assert_refused(run, str(csd), "'words/data/a/features' has external storage", str(secret))
    assert not out.exists()


def _soft_link(f: h5py.File, tmp_path: Path) -> None:
    del f["valid"]
    f["valid"] = h5py.SoftLink("/train")


def _external_link(f: h5py.File, tmp_path: Path) -> None:
    other = _dataset(tmp_path, "other.h5")
    del f["valid"]
    f["valid"] = h5py.ExternalLink(str(other), "/valid")


def _hard_link(f: h5py.File, tmp_path: Path) -> None:
    del f["valid"]
    f["valid"] = f["train"]


def _replace_audio(make):
    def edit(f: h5py.File, tmp_path: Path) -> None:
        audio = f["train/audio"][()]
        del f["train/audio"]
        f["train/audio"] = make(audio)

    return edit


# name: (how the valid file is changed, what the refusal says)
STRUCTURE = {
    "valid is a soft link to train": (_soft_link, "'valid' is a soft link to '/train'"),
    "valid is an external link": (_external_link, "'valid' is an external link to '/valid' in"),
    "valid is train under a second name": (_hard_link, "'train' is stored under 2 names"),
    "int64 features": (_replace_audio(lambda a: (a * 100).astype(np.int64)), "'train/audio' is int64, expected"),
    "bytes features": (_replace_audio(lambda a: a.astype("S8")), "'train/audio' is strings, expected float32"),
    "complex features": (_replace_audio(lambda a: a.astype(np.complex64)), "'train/audio' is complex64, expected"),
    "2-d features": (_replace_audio(lambda a: a[:, 0]), "expected 3 dimension(s)"),
    "a zero-size feature dim": (_replace_audio(lambda a: a[:, :, :0]), "an axis after the first is empty"),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_train_refuses_links_and_wrong_dtypes(tmp_path, tiny_encoder, capsys, case):
    """Each of these trained silently: the loaders read whatever h5py returned."""
    edit, says = STRUCTURE[case]
    path = _dataset(tmp_path)
    with h5py.File(path, "a") as f:
        edit(f, tmp_path)
    code = main(["train", str(_pipeline(tmp_path, path, tiny_encoder))])
    assert_refused_in_process(code, capsys.readouterr().err, str(path), says)


def test_non_finite_features_and_virtual_datasets_are_refused(tmp_path, capsys):
    splits = generate("mosi", scale=0.05)
    splits["valid"].video[0, 0, 0] = np.nan
    nan = tmp_path / "nan.h5"
    write_dataset(nan, splits, name="nan", provenance={})  # its checksums match: inspect said OK
    assert_refused_in_process(main(["data", "inspect", str(nan)]), capsys.readouterr().err, "'valid/video' has NaN")

    virtual = _dataset(tmp_path, "virtual.h5")
    source = _dataset(tmp_path, "source.h5")
    with h5py.File(virtual, "a") as f:
        shape = f["test/audio"].shape
        layout = h5py.VirtualLayout(shape=shape, dtype="f4")
        layout[...] = h5py.VirtualSource(str(source), "test/audio", shape=shape)
        del f["test/audio"]
        f.create_virtual_dataset("test/audio", layout)
    _reseal(virtual)
    code = main(["data", "inspect", str(virtual)])
    assert_refused_in_process(code, capsys.readouterr().err, "'test/audio' is a virtual dataset")


def test_a_declared_size_over_what_the_file_stores_is_refused(tmp_path):
    """An unwritten chunked dataset of 1.9 GB in a file of kilobytes reads as fill values."""
    path = _dataset(tmp_path)
    with h5py.File(path, "a") as f:
        n = len(f["train/labels"])
        del f["train/audio"]
        f.create_dataset("train/audio", shape=(n, 100_000, 74), dtype="f4", chunks=(1, 1000, 74))
    assert path.stat().st_size < 10 << 20
    run = sati("data", "inspect", path, cwd=tmp_path)
    assert_refused(run, str(path), "'train/audio' declares 1894400000 bytes", "but stores 0")
    # the cap is named, and raising it is the documented way out
    assert "SATI_MAX_EXPANSION" in run.stderr


def test_train_verifies_the_checksums(tmp_path, tiny_encoder, capsys):
    """`sati train` never recomputed a checksum: an edited split or edited stored tokens trained."""
    edited = _dataset(tmp_path, "edited.h5")
    with h5py.File(edited, "a") as f:
        f["valid/labels"][0] = -f["valid/labels"][0] + 0.5
    code = main(["train", str(_pipeline(tmp_path, edited, tiny_encoder))])
    err = capsys.readouterr().err
    assert_refused_in_process(code, err, str(edited), "split 'valid'", "changed after it was written")

    splits = generate("mosi", scale=0.05)
    tokenizer = load_tokenizer(str(tiny_encoder))
    tokens = {name: [pretokenize(tokenizer, str(tiny_encoder), s.text, 50)] for name, s in splits.items()}
    stored = tmp_path / "tokens.h5"
    write_dataset(stored, splits, name="tokens", provenance={}, tokens=tokens)
    with h5py.File(stored, "a") as f:
        (key,) = f["train/tokens"].keys()
        f[f"train/tokens/{key}/ids"][0, 1] += 1
    code = main(["train", str(_pipeline(tmp_path, stored, tiny_encoder))])
    assert_refused_in_process(code, capsys.readouterr().err, str(stored), "the tokens 'train/tokens/", "changed")


# --- pickles (sati data prepare) --------------------------------------------------------------------


def _mmsa(**train) -> dict:
    """An MMSA pickle's contents with ``train`` keys replaced."""
    sizes = (("train", 6), ("valid", 3), ("test", 3))
    data = {name: mmsa_split(n, seed=i, prefix=name) for i, (name, n) in enumerate(sizes)}
    data["train"].update(train)
    return data


def _deep_key() -> bytes:
    """{((((None,),),)...) nested 10^6 deep: None} in protocol-2 opcodes (1 MB): hashing the key overflowed
    the C stack (SIGSEGV)."""
    return b"\x80\x02}N" + b"\x85" * 1_000_000 + b"Ns."


def _billion_laughs() -> bytes:
    key = "lol"
    for _ in range(9):
        key = (key,) * 10  # 10^9 references to "lol", ten of each level below
    return pickle.dumps({key: {}}, protocol=2)


def _shared_string() -> dict:
    big = "x" * (1 << 20)
    data = _mmsa()
    data["train"] = mmsa_split(1500, t=3, d_a=2, d_v=2, d_t=2, prefix="train")
    data["train"]["raw_text"] = np.array([big] * 1500, dtype=object)  # one string, 1,500 references
    return data


def _pool_target() -> dict:
    data = {
        name: mmsa_split(n, unaligned=True, seed=i, prefix=name)
        for i, (name, n) in enumerate((("train", 6), ("valid", 3), ("test", 3)))
    }
    data["train"]["text_bert"][0, 1, 0] = 300_000_000  # one mask "length" of 3e8: pooled to 3e8 steps
    return data


# name: (the pickle's contents or bytes, extra prepare options, what the refusal says)
PICKLES = {
    "a tuple nested 10^6 deep as a dict key": (_deep_key, (), "containers nested over 100 deep"),
    "features shaped (n, 2^27, 0)": (
        lambda: _mmsa(audio=np.zeros((6, 1 << 27, 0), np.float32), vision=np.zeros((6, 1 << 27, 0), np.float32)),
        (),
        "an array of shape (6, 134217728, 0): an axis after the first is empty",
    ),
    "a mask length of 3e8 with --pool-unaligned": (
        _pool_target,
        ("--pool-unaligned",),
        "'train/text_bert' row 1 (the attention mask) must hold 0s and 1s",
    ),
    "1,500 references to one 1 MB string": (_shared_string, (), "a reference to 'xxxx"),
    "a billion-laughs tuple as a split key": (_billion_laughs, (), "a reference to (("),
    "bytes() of a size": (lambda: _mmsa(raw_text=_Reduce(bytes, (1 << 30,))), (), "bytes(1073741824) (a size"),
    "bytearray() of a size": (lambda: _mmsa(id=_Reduce(bytearray, (1 << 30,))), (), "bytearray(1073741824)"),
    "a sub-array dtype as an array's own dtype": (
        lambda: _mmsa(
            audio=_Reduce(
                _reconstruct, (np.ndarray, (0,), b"b"), (1, (6,), np.dtype(("<f4", (8, 5))), False, bytes(960))
            )
        ),
        (),
        "an array whose own dtype is the sub-array dtype",
    ),
    "0-d labels": (lambda: _mmsa(regression_labels=np.array(1.0)), (), "'train/regression_labels' has shape ()"),
    "a dict as audio": (lambda: _mmsa(audio={"a": 1}), (), "'train/audio' is a dict, expected an array"),
}


@pytest.mark.parametrize("case", list(PICKLES))
def test_prepare_refuses_a_small_pickle_that_costs_a_large_machine(tmp_path, case):
    make, options, says = PICKLES[case]
    contents = make()
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(contents if isinstance(contents, bytes) else pickle.dumps(contents, protocol=4))
    assert path.stat().st_size < 10 << 20
    out = tmp_path / "out.h5"
    run = sati("data", "prepare", "--from", "mmsa", path, "--out", out, *options, cwd=tmp_path)
    assert_refused(run, str(path), says)
    assert not out.exists()


def test_a_legitimate_pickle_prepares_under_the_same_limits(tmp_path):
    """The limits refuse the attacks above, not every command: a valid file is prepared under them."""
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(pickle.dumps(_mmsa(), protocol=4))
    run = sati("data", "prepare", "--from", "mmsa", path, "--out", tmp_path / "out.h5", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def test_misa_rows_of_the_wrong_kind_are_named(tmp_path):
    folder = tmp_path / "misa"
    folder.mkdir()
    for i, name in enumerate(("train", "dev", "test")):
        rows = misa_rows(3, seed=i, video=name)
        if name == "dev":
            (words, _, acoustic, actual), label, seg = rows[1]
            rows[1] = ((words, {"not": "an array"}, acoustic, actual), label, seg)
        (folder / f"{name}.pkl").write_bytes(pickle.dumps(rows))
    run = sati("data", "prepare", "--from", "misa", folder, "--out", tmp_path / "out.h5", cwd=tmp_path)
    assert_refused(run, str(folder), "not a well-formed misa dataset (TypeError")


def test_a_csv_field_over_the_csv_limit_is_named(tmp_path):
    path = tmp_path / "label.csv"
    path.write_text("id,text,label,mode\na_1,short,1.0,train\na_2," + "w " * 70_000 + ",0.5,valid\n")
    run = sati("data", "prepare", "--from", "csv", path, "--out", tmp_path / "out.h5", cwd=tmp_path)
    assert_refused(run, f"{path}: line 3: field larger than field limit (131072)")


def test_caps_are_named_and_can_be_raised(tmp_path):
    """A cap that refuses a genuine file says which variable raises it; a malformed variable is named."""
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(pickle.dumps(_mmsa(), protocol=4))  # nests 3 deep: split dict, split, raw_text array
    out = tmp_path / "out.h5"
    prepare = ("data", "prepare", "--from", "mmsa", path, "--out", out)
    assert_refused(sati(*prepare, cwd=tmp_path, env={"SATI_MAX_DEPTH": "2"}), "SATI_MAX_DEPTH (now 2)")
    line = assert_refused(sati(*prepare, cwd=tmp_path, env={"SATI_MAX_DEPTH": "many"}), "SATI_MAX_DEPTH='many'")
    assert str(path) not in line  # the variable is wrong, not the file
    run = sati(*prepare, cwd=tmp_path, env={"SATI_MAX_DEPTH": "3"})
    assert run.returncode == 0, run.stderr[-3000:]


def test_default_caps_admit_mosei():
    """MOSEI's largest arrays (SPEC 5b: MMSA's unaligned_50 and its BERT text features) fit the default caps."""
    from sati.untrusted import limits

    caps = limits()
    n = 16326  # MOSEI train
    for shape in ((n, 500, 74), (n, 500, 35), (n, 50, 768), (n, 3, 50)):
        assert np.prod(shape) * 8 <= caps.array_bytes  # even as float64 / int64


# --- YAML configs (sati config) ---------------------------------------------------------------------


def _yaml_laughs() -> str:
    levels = ["  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"  - &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "name:\n" + "\n".join(levels) + "\n"


YAML = {
    "an 800-byte billion laughs": (_yaml_laughs, "expands to over"),
    "10^5 nested [": (lambda: "name: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested over 100 deep"),
}


@pytest.mark.parametrize("case", list(YAML))
def test_config_refuses_yaml_bombs(tmp_path, case):
    make, says = YAML[case]
    path = tmp_path / "pipeline.yaml"
    path.write_text(make())
    assert path.stat().st_size < 10 << 20
    line = assert_refused(sati("config", path, cwd=tmp_path), f"{path}: not valid YAML", says)
    assert len(line) < 1000


def test_set_refuses_a_yaml_bomb(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("name: x\n")
    laughs = "[" + ", ".join(f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi"))
    value = "[&a [lol, lol, lol, lol, lol, lol, lol, lol, lol], " + laughs[1:] + "]"
    assert_refused(sati("config", path, "--set", f"name={value}", cwd=tmp_path), "--set", "expands to over")
