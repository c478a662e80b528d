"""Hostile input at every entry point (issue 19): each test builds its bad files on the fly and asserts on the
message and the exit code. One bad item never stops the others, output formats stay valid whatever the
file names hold, training never writes non-finite weights and stops on a signal with a checkpoint that
resumes exactly. Tiny models: the session's trained master-tiny (conftest) for reading, a 1.4 M model on six
rendered words for training.
"""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from wordimages import render_word

from conftest import WORDS
from masterocr.cli.main import main
from masterocr.data.image import ImageError

ROOT = Path(__file__).resolve().parents[1]
NON_UTF8 = b"caf\xe9"  # Latin-1 bytes: not UTF-8


def py(code: str, timeout: int = 120, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env, **kwargs)


def png_header(width: int, height: int) -> bytes:
    """A 66-byte PNG that declares width x height pixels (a decompression bomb: refused from its header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


def hostile_folder(folder: Path) -> dict[str, str]:
    """Three good word images plus one of each kind of bad entry; {file name: expected reason} for the bad."""
    folder.mkdir(parents=True)
    for word in WORDS[:3]:
        render_word(word).save(folder / f"{word}.png")
    render_word(WORDS[3]).save(folder / "tab\tname.png")
    render_word(WORDS[4]).save(folder / "new\nline.png")
    render_word(WORDS[5]).save(os.fsdecode(bytes(folder) + b"/" + NON_UTF8 + b".png"))
    (folder / "truncated.png").write_bytes(render_word("cat").tobytes()[:40])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image")
    (folder / "bomb.png").write_bytes(png_header(20_000, 20_000))
    (folder / "folder.png").mkdir()
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    os.symlink(folder / "loop.png", folder / "loop.png")
    return {"truncated.png": "not an image file", "empty.png": "empty file", "text.png": "not an image file",
            "bomb.png": "too large", "folder.png": "not a file", "dangling.png": "dangling link",
            "loop.png": "symlink loop"}


# ---- the command line itself ----------------------------------------------------------------------------

def test_version_help_and_usage_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and re.fullmatch(r"masterocr \d+\.\d+\.\d+\s*", capsys.readouterr().out)
    assert main([]) == 2                                  # no command: usage, as `masterocr data`
    assert "COMMAND" in capsys.readouterr().out
    assert main(["data"]) == 2
    for bad in (["read", "x.png", "--batch-size", "0"], ["eval", "m", "--data", "d", "--batch-size", "-3"],
                ["data", "synth", "x.lmdb", "--count", "0"], ["data", "inspect", "d", "--columns", "0"]):
        with pytest.raises(SystemExit) as done:
            main(bad)
        assert done.value.code == 2
        assert "must be 1 or more" in capsys.readouterr().err


def test_data_command_names_the_lmdb_layouts_without_importing_them():
    from masterocr.cli.data import LAYOUT_NAMES
    from masterocr.data.datasets import LMDB_LAYOUTS

    assert sorted(LAYOUT_NAMES) == sorted(LMDB_LAYOUTS)


def test_help_version_and_metrics_do_not_import_torch(tmp_path):
    (tmp_path / "p.tsv").write_text("a.png\tcat\n")
    (tmp_path / "l.tsv").write_text("a.png\tcat\n")
    code = ("import sys, io, contextlib\nfrom masterocr.cli.main import main\n"
            "for argv in (['--version'], ['--help'], ['read', '--help'], ['train', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main(argv)\n"
            "        except SystemExit: pass\n"
            f"assert main(['metrics', {str(tmp_path / 'p.tsv')!r}, {str(tmp_path / 'l.tsv')!r}]) == 0\n"
            "print('torch' in sys.modules)")
    out = py(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_a_bug_is_reported_as_one_with_its_traceback(monkeypatch, capsys):
    import masterocr.cli.metrics as metrics

    def broken(args):
        raise KeyError("oops")

    monkeypatch.setattr(metrics, "run", broken)
    monkeypatch.delenv("MASTEROCR_TRACEBACK", raising=False)
    assert main(["metrics", "a", "b"]) == 70
    err = capsys.readouterr().err
    assert err.startswith("masterocr metrics: internal error") and "Traceback" in err and "KeyError" in err


def test_slow_tests_are_marked_so_that_m_slow_selects_them():
    """`pytest -m slow` exits 5 when no test carries the mark; read the marks statically (collecting with a
    second pytest would import torch again for ~10 s)."""
    import ast
    import tomllib

    marked = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and any(
                    ast.unparse(d).startswith("pytest.mark.slow") for d in node.decorator_list):
                marked.append(f"{path.name}::{node.name}")
    assert "test_master.py::test_master_tiny_overfits_64_words" in marked
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "not slow" in options["addopts"] and any(m.startswith("slow:") for m in options["markers"])


# ---- read: command line ---------------------------------------------------------------------------------

def test_read_cli_reports_every_bad_entry_and_keeps_tsv_valid(tiny_weights, tmp_path, capsys):
    bad = hostile_folder(tmp_path / "in")
    code = main(["read", str(tmp_path / "in"), str(tmp_path / "missing.png"), "--model", str(tiny_weights),
                 "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = [line.split("\t") for line in out.splitlines()]
    assert all(len(row) == 3 for row in rows) and len(rows) == 6       # one line per good image, whatever its name
    texts = {Path(row[0]).name: row[1] for row in rows}
    assert texts["tab\\tname.png"] == WORDS[3] and texts["new\\nline.png"] == WORDS[4]
    assert texts["caf\\xe9.png"] == WORDS[5] and texts["cat.png"] == "cat"
    for name, reason in bad.items():
        assert re.search(rf"masterocr read: \S*/{re.escape(name)}: ", err), name
    assert "missing.png: no such file" in err
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("masterocr read: 8 of 14 input(s) failed (") and summary.endswith(", 6 read")
    for reason in ("2 not an image file", "1 dangling link", "1 empty file", "1 symlink loop", "1 too large",
                   "1 not a file", "1 no such file"):
        assert reason in summary


def test_read_cli_json_lines_are_utf8_and_give_the_names_back(tiny_weights, tmp_path, capsysbinary):
    hostile_folder(tmp_path / "in")
    assert main(["read", str(tmp_path / "in"), "--json", "--model", str(tiny_weights)]) == 1
    lines = capsysbinary.readouterr().out.splitlines()
    names = set()
    for line in lines:
        item = json.loads(line.decode("utf-8"))               # strict UTF-8: raises on a raw non-UTF-8 byte
        assert os.path.exists(os.fsencode(item["path"]))      # the escapes give back the very file name
        names.add(os.fsencode(item["path"]).rsplit(b"/", 1)[1])
    assert {NON_UTF8 + b".png", b"tab\tname.png", b"new\nline.png"} <= names


def test_read_cli_devices_and_attention_names(tiny_weights, tmp_path, capsys):
    assert main(["read", str(tmp_path), "--device", "tpu9", "--model", str(tiny_weights)]) == 2
    assert "device 'tpu9': not a device name" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["read", str(tmp_path), "--device", "cuda", "--model", str(tiny_weights)]) == 2
        assert "device 'cuda': this torch is built for CPU only" in capsys.readouterr().err
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        render_word("cat").save(tmp_path / sub / "word.png")
    out_dir = tmp_path / "att"
    assert main(["read", str(tmp_path / "a"), str(tmp_path / "b"), "--attention", str(out_dir), "--json",
                 "--model", str(tiny_weights)]) == 0
    captured = capsys.readouterr()
    where = {json.loads(line)["path"]: json.loads(line)["attention"] for line in captured.out.splitlines()}
    assert where == {str(tmp_path / "a" / "word.png"): str(out_dir / "word.png"),
                     str(tmp_path / "b" / "word.png"): str(out_dir / "word_2.png")}
    assert f"b/word.png: attention written to {out_dir / 'word_2.png'}" in captured.err


def test_read_into_a_closed_pipe_stops_quietly(tiny_weights, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    render_word("cat").save(folder / "000.png")
    for i in range(1, 300):  # far more than are read before the reader goes away
        (folder / f"{i:03d}.png").write_bytes((folder / "000.png").read_bytes())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "masterocr.cli.main", "read", str(folder), "--model",
                             str(tiny_weights), "--batch-size", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    first = proc.stdout.readline()                            # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and first.startswith(str(folder).encode())
    assert "Traceback" not in err and "BrokenPipe" not in err


# ---- read: Python API ------------------------------------------------------------------------------------

def test_readme_python_example_runs_as_written_with_a_broken_file(tmp_path, monkeypatch, capsys):
    from masterocr.weights import bundled_names

    if not bundled_names():
        pytest.skip("no bundled model")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("Python:\n\n", 1)[1].split("\n\n", 1)[0]
    snippet = "\n".join(line[4:] for line in block.splitlines())
    assert 'rec.read(["word1.png", "word2.jpg"])' in snippet
    render_word("hello").save(tmp_path / "word1.png")
    (tmp_path / "word2.jpg").write_bytes(b"\xff\xd8\xff\xe0 a JPEG cut short")
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="word2.jpg"):
        exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0].lower() == "hello"
    assert out[1].startswith(" 0.0 []") and out[2].startswith("unreadable: word2.jpg: ")


def test_read_api_gives_a_named_error_for_every_kind_of_bad_input(rec_tiny, tmp_path):
    good = tmp_path / "sun.png"
    render_word("sun").save(good)
    inputs = [None, torch.zeros(3, 32, 64), os.fsencode(good), np.zeros((8, 8), np.int8) - 1,
              np.full((8, 8), np.nan), np.full((8, 8, 3), np.inf), np.zeros((3, 32, 64), np.float32),
              [str(good)], str(tmp_path), 7, str(good), open(good, "rb")]
    expected = ["<None>: not an image input", "<torch.Tensor>: not an image input", "pass its path as str",
                "integer values must lie in 0..255", "NaN or infinite", "NaN or infinite", "channels first",
                "a list of images goes to read() itself", "is a directory", "<int>: not an image input",
                None, None]
    with pytest.warns(UserWarning):
        results = rec_tiny.read(inputs)
    assert len(results) == len(inputs)
    for r, message in zip(results, expected):
        if message is None:
            assert r.ok and r.text == "sun"
        else:
            assert not r.ok and message in r.error and r.text == "" and r.confidence == 0.0
    with pytest.raises(ImageError, match="not an image input"):
        rec_tiny.read(None)                                   # a single input raises, naming it
    with pytest.raises(ValueError, match="batch_size 0"):
        rec_tiny.read([str(good)], batch_size=0)


@pytest.fixture
def rec_tiny(tiny_weights):
    import masterocr

    return masterocr.load(tiny_weights)


# ---- eval and data --------------------------------------------------------------------------------------

def labelled(folder: Path, lines: list[bytes], words=("cat", "dog")) -> Path:
    (folder / "images").mkdir(parents=True)
    for word in words:
        render_word(word).save(folder / "images" / f"{word}.png")
    (folder / "labels.tsv").write_bytes(b"".join(line + b"\n" for line in lines))
    return folder


def lmdb_with(folder: Path, entries: dict[bytes, bytes]) -> Path:
    import lmdb

    env = lmdb.open(str(folder), map_size=1 << 20)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key, value)
    env.close()
    return folder


@pytest.fixture
def bad_datasets(tmp_path):
    """{name: (path, expected message)} for datasets that cannot be used, and one good dataset."""
    good = labelled(tmp_path / "good", [b"images/cat.png\tcat", b"images/dog.png\tdog"])
    mixed = labelled(tmp_path / "mixed", [b"images/cat.png\tcat", b"images/dog.png\tdo" + NON_UTF8,
                                          b"images/dog.png\tdog\textra", b"no tab here"])
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "data.mdb").write_bytes(os.urandom(4096))
    (tmp_path / "empty_mdb").mkdir()
    (tmp_path / "empty_mdb" / "data.mdb").write_bytes(b"")
    negative = lmdb_with(tmp_path / "negative", {b"num-samples": b"-5"})
    huge = lmdb_with(tmp_path / "huge", {b"num-samples": b"1000000000", b"label-000000001": b"x"})
    empty = labelled(tmp_path / "empty", [])
    malformed = labelled(tmp_path / "malformed", [b"one", b"two"])
    bad = {"random": (tmp_path / "random", "random: not a readable LMDB"),
           "empty_mdb": (tmp_path / "empty_mdb", "empty_mdb: not a readable LMDB"),
           "negative": (negative, "'num-samples' is -5, not a sample count"),
           "huge": (huge, "'num-samples' is 1000000000, but the LMDB holds only 2 entries"),
           "empty": (empty, "empty: holds no samples"),
           "malformed": (malformed, "malformed: holds no samples"),
           "nowhere": (tmp_path / "nowhere", "nowhere: no such file or directory")}
    return good, mixed, bad


def test_eval_scores_the_good_datasets_and_names_each_bad_one(tiny_weights, bad_datasets, capsys, caplog):
    good, mixed, bad = bad_datasets
    code = main(["eval", str(tiny_weights), "--data", str(good), str(mixed), *[str(p) for p, _ in bad.values()],
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1
    table = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(table) == {"Dataset", "good", "mixed", "Combined"}
    assert "|         2 |   100.00 |" in table["good"]                    # cat, dog
    assert "|         1 |   100.00 |" in table["mixed"]                   # the one well-formed line
    for _, message in bad.values():
        assert message in err, message
    assert "labels.tsv:2: skipping malformed entry (not UTF-8 (byte 0xe9 at column 21))" in caplog.text
    assert "labels.tsv:3: skipping malformed entry (more than one tab" in caplog.text
    assert "3 malformed or damaged entries" in err and "dropped by protocol" not in err
    assert main(["eval", str(tiny_weights), "--data", str(bad["random"][0]), "--no-progress"]) == 2
    assert "no dataset to evaluate" in capsys.readouterr().err


def test_data_build_and_inspect_name_what_they_skip(bad_datasets, tmp_path, capsys, caplog):
    good, mixed, bad = bad_datasets
    (mixed / "images" / "gone.png").unlink(missing_ok=True)
    with open(mixed / "labels.tsv", "ab") as f:
        f.write(b"images/gone.png\tgone\nimages\t\n")
    out_lmdb = tmp_path / "mixed.lmdb"
    assert main(["data", "build", str(mixed), str(out_lmdb)]) == 1
    out, err = capsys.readouterr()
    assert "skipped 1 unreadable images (1 no such file)" in out and "gone.png" in out
    assert "wrote 1 samples" in out and "1 unreadable image(s) and 3 malformed or damaged entries left out" in err
    for name in ("empty", "malformed"):
        assert main(["data", "build", str(bad[name][0]), str(tmp_path / f"{name}.lmdb")]) == 2
        assert "holds no usable samples" in capsys.readouterr().err
        assert not (tmp_path / f"{name}.lmdb").exists()                     # no empty LMDB left behind
    for name in ("random", "negative", "huge"):
        assert main(["data", "inspect", str(bad[name][0]), "--no-montage"]) == 2
        assert bad[name][1] in capsys.readouterr().err
    assert main(["data", "inspect", str(bad["empty"][0]), "--no-montage"]) == 2
    assert "holds no samples" in capsys.readouterr().err
    # An LMDB whose image bytes are not an image: the montage warning names the sample, not "<N bytes>".
    broken = lmdb_with(tmp_path / "broken", {b"num-samples": b"1", b"label-000000001": b"cat",
                                             b"image-000000001": b"\x89PNG broken"})
    assert main(["data", "inspect", str(broken), "--montage", str(tmp_path / "m.png"), "--size-samples", "0"]) == 0
    assert f"{broken}:1: not an image file" in caplog.text


def test_data_synth_refuses_bad_settings(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s.lmdb")]) == 2
    assert "--count N (>= 1) is required" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "s.lmdb"), "--count", "2", "--fonts", str(tmp_path / "no")]) == 2
    assert f"data synth: error: font path {tmp_path / 'no'}: no such file" in capsys.readouterr().err
    assert main(["data", "synth", "--preview", str(tmp_path / "p.png"), "--config", "effects.nope=1"]) == 2
    assert "Key 'nope' not in" in capsys.readouterr().err


# ---- metrics ----------------------------------------------------------------------------------------------

def test_metrics_names_broken_prediction_and_label_files(tmp_path, capsys):
    labels = tmp_path / "labels.tsv"
    labels.write_bytes(b"a.png\tcat\nb.png\tdog\nc.png\tdo" + NON_UTF8 + b"\n")
    broken_json = tmp_path / "predict_result.json"
    broken_json.write_text('[{"filename": "a.png", "result": "cat"},\n {"filename": ')
    assert main(["metrics", str(broken_json), str(labels)]) == 2
    assert f"{broken_json}: not valid JSON (line 2, column" in capsys.readouterr().err
    (tmp_path / "obj.json").write_text('{"filename": "a.png"}')
    assert main(["metrics", str(tmp_path / "obj.json"), str(labels)]) == 2
    assert "JSON holds a dict, expected a list" in capsys.readouterr().err
    (tmp_path / "notabs.tsv").write_text("a.png cat\nb.png dog\n")
    assert main(["metrics", str(tmp_path / "notabs.tsv"), str(labels)]) == 2
    assert "no line holds a tab" in capsys.readouterr().err

    preds = tmp_path / "preds.tsv"
    preds.write_text("a.png\tcat\t0.9\nb.png\tdig\tlow\n")
    assert main(["metrics", str(preds), str(labels), "--json"]) == 1      # scored, with bad lines named
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["units"] == "fraction" and summary["num_samples"] == 2 and summary["accuracy"] == 0.5
    assert summary["malformed"] == 2
    assert f"{labels}:3: not UTF-8 (byte 0xe9 at column 12): skipped" in captured.err
    assert f"{preds}:2: confidence 'low' is not a number: skipped" in captured.err
    (tmp_path / "empty.tsv").write_text("")
    assert main(["metrics", str(preds), str(tmp_path / "empty.tsv")]) == 2
    assert "no sample to score" in capsys.readouterr().err


# ---- weights: every loader, info and average -----------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.fixture
def bad_weights(tmp_path, tiny_weights):
    """{file: expected message} for weights files that must be refused, with what they are."""
    import pickle

    from safetensors.torch import load_file, save_file

    from masterocr.weights import read_safetensors

    tensors, cfg = read_safetensors(tiny_weights)
    nan = {k: v.clone() for k, v in tensors.items()}
    nan["head.bias"][0] = float("nan")
    save_file(nan, tmp_path / "nan.safetensors", metadata={"model_config": json.dumps(cfg)})
    save_file(load_file(tiny_weights), tmp_path / "garbage.safetensors", metadata={"model_config": "{oops"})
    liar = dict(cfg, charset="0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    save_file(load_file(tiny_weights), tmp_path / "liar.safetensors", metadata={"model_config": json.dumps(liar)})
    torch.save({"state_dict": Payload()}, tmp_path / "payload.ckpt")
    (tmp_path / "legacy.pkl").write_bytes(pickle.dumps({"w": Payload()}, protocol=4))
    (tmp_path / "random.ckpt").write_bytes(os.urandom(2048))
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"x": torch.zeros(1)}, tmp_path / "torch.safetensors")
    return {
        tmp_path / "nan.safetensors": "tensor 'head.bias' holds 1 NaN or infinite value(s)",
        tmp_path / "garbage.safetensors": "garbage.safetensors: the metadata's model_config is not valid JSON",
        tmp_path / "payload.ckpt": "payload.ckpt: refused: the file holds pickled code",
        tmp_path / "legacy.pkl": "legacy.pkl: refused: a Python pickle",
        tmp_path / "random.ckpt": "random.ckpt: not a torch checkpoint",
        tmp_path / "empty.ckpt": "empty.ckpt: empty file",
        tmp_path / "torch.safetensors": "it is a torch checkpoint: name it .ckpt",
    }


def test_weights_loaders_refuse_bad_files_by_name(bad_weights, tmp_path, tiny_weights, capsys):
    from masterocr.importers import load_untrusted
    from masterocr.weights import WeightsError, load_model, read_model_config

    for path, message in bad_weights.items():
        with pytest.raises(WeightsError) as refused:
            load_model(path)
        assert message in str(refused.value), path
        assert main(["info", str(path)]) == 2
        assert message in capsys.readouterr().err
    for name in ("payload.ckpt", "legacy.pkl"):
        with pytest.raises(WeightsError, match="refused"):
            read_model_config(tmp_path / name)
        with pytest.raises(WeightsError, match="refused"):
            load_untrusted(tmp_path / name)
    with pytest.raises(WeightsError, match="size mismatch for head.weight"):
        load_model(tmp_path / "liar.safetensors")
    assert main(["read", str(tiny_weights), "--model", str(tmp_path / "nan.safetensors")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_average_refuses_broken_sources_and_never_writes_inf(bad_weights, tmp_path, tiny_weights, capsys):
    from safetensors.torch import load_file, save_file

    from masterocr.weights import read_safetensors

    out = tmp_path / "mean.safetensors"
    for bad in ("nan.safetensors", "payload.ckpt"):
        assert main(["average", str(tiny_weights), str(tmp_path / bad), "-o", str(out)]) == 2
        assert bad in capsys.readouterr().err and not out.exists()
    _, cfg = read_safetensors(tiny_weights)
    big = {k: v * 1e6 if v.is_floating_point() else v for k, v in load_file(tiny_weights).items()}
    save_file(big, tmp_path / "big.safetensors", metadata={"model_config": json.dumps(cfg)})
    assert main(["average", str(tmp_path / "big.safetensors"), str(tmp_path / "big.safetensors"), "-o", str(out),
                 "--dtype", "fp16"]) == 2                                     # 1e6 overflows fp16 to inf
    assert "not written: tensor" in capsys.readouterr().err and not out.exists()
    assert main(["average", str(tiny_weights), str(tiny_weights), "-o", "/proc/nope/mean.safetensors"]) == 2
    assert "/proc/nope/mean.safetensors: cannot write here" in capsys.readouterr().err


def test_info_and_train_name_what_is_wrong_in_a_config(tmp_path, capsys):
    configs = {"broken.yaml": ("model:\n  name: master\n  charset: [unclosed\n", "not valid YAML (line 4, column 1)"),
               "list.yaml": ("- a\n- b\n", "expected a mapping of sections"),
               "negative.yaml": ("base: master.yaml\nmodel:\n  d_model: -3\n", "negative dimension -3"),
               "heads.yaml": ("base: master.yaml\nmodel:\n  d_model: 100\n  num_heads: 3\n",
                              "d_model=100 is not divisible by num_heads=3")}
    for name, (text, message) in configs.items():
        (tmp_path / name).write_text(text)
        assert main(["info", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err, name
    (tmp_path / "mine.yaml").write_text("base: master-tiny.yaml\nmodel:\n  img_size: [32, 64]\n")
    assert main(["info", str(tmp_path / "mine.yaml"), "--json"]) == 0   # `base:` names a shipped config too
    assert json.loads(capsys.readouterr().out)["input_size"] == [3, 32, 64]
    assert main(["train", "--config", str(tmp_path / "broken.yaml"), "--output", str(tmp_path / "r")]) == 2
    assert "broken.yaml: not valid YAML" in capsys.readouterr().err
    assert main(["info", "master-tiny", "--img-size", "4", "4"]) == 2
    assert "input size 4x4: model 'master' cannot run on it" in capsys.readouterr().err


def test_master_small_is_one_model(capsys):
    from masterocr.config import load_config, to_dict
    from masterocr.weights import bundled_names, read_model_config, resolve_model_config

    config = resolve_model_config(to_dict(load_config("master-small").model))
    assert config["img_size"] == [32, 100]
    if "master-small" not in bundled_names():
        pytest.skip("no bundled master-small")
    assert config == resolve_model_config(read_model_config("master-small"))
    assert main(["info", "master-small"]) == 0
    out = capsys.readouterr().out
    assert "bundled weights master-small (what `read` and `load()` use" in out and "3 x 32 x 100" in out


# ---- training ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def words(tmp_path_factory):
    from test_training import WORDS as TRAIN_WORDS
    from wordimages import render_words

    return render_words(tmp_path_factory.mktemp("train_words"), TRAIN_WORDS)


def tiny_run_config(tmp_path: Path, words: Path, **train) -> Path:
    """A master-tiny config naming its data by a path relative to tmp_path (run from there)."""
    from test_training import tiny_config

    path = tiny_config(tmp_path, words, **train)
    cfg = json.loads(path.read_text())
    relative = os.path.relpath(words, tmp_path)
    cfg["data"]["train"] = [{"path": relative}]
    cfg["data"]["val"] = [{"name": "train", "path": relative}]
    path.write_text(json.dumps(cfg))
    return path


def last_json(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(words, tmp_path, monkeypatch, capsys):
    steps = 12
    cfg = tiny_run_config(tmp_path, words, max_steps=steps, batch_size=2, checkpoint_every_steps=100,
                          val_every_steps=3, schedule="cosine", progress_refresh=0)
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "masterocr.cli.main", "train", "--config", str(cfg),
                             "--output", "stopped"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics_csv = tmp_path / "stopped" / "csv" / "metrics.csv"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not (
            (tmp_path / "stopped" / "checkpoints" / "best.ckpt").exists()):  # the first validation (step 3) ran
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-3000:]
    summary = last_json(out)
    stopped_at = summary["global_step"]
    assert summary["signal"] == "SIGTERM" and 3 <= stopped_at < steps, summary
    assert f"SIGTERM: checkpoint stopped/checkpoints/last.ckpt at step {stopped_at}" in err
    # Lightning's lines once each, without the advertisement
    assert err.count("GPU available") == 1 and "Tip:" not in err and "Traceback" not in err
    assert not (tmp_path / "stopped" / "weights").exists()              # not a finished run: no final weights

    # --resume from another directory: the saved config holds absolute paths.
    saved = (tmp_path / "stopped" / "config.yaml").read_text()
    assert f"path: {words}" in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", str(tmp_path / "stopped" / "checkpoints" / "last.ckpt"), "--quiet"]) == 0
    assert last_json(capsys.readouterr().out)["global_step"] == steps
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(cfg), "--output", "reference", "--quiet"]) == 0
    capsys.readouterr()

    a = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # metrics.csv continued: the same steps as the uninterrupted run's, none lost, none twice.
    def rows(path):
        import csv

        with open(path, newline="") as f:
            return [(r["step"], r["loss"], r["val/acc"]) for r in csv.DictReader(f)]

    assert rows(metrics_csv) == rows(tmp_path / "reference" / "csv" / "metrics.csv")

    # Resuming the finished run says so and trains nothing.
    assert main(["train", "--resume", "stopped/checkpoints/last.ckpt", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert f"is a finished run (step {steps} of train.max_steps={steps}): nothing to train" in captured.err
    assert last_json(captured.out)["already_finished"] is True
    # ... and a resumed run cannot change its model.
    assert main(["train", "--resume", "stopped/checkpoints/last.ckpt", "model.charset=94", "--quiet"]) == 2
    assert "the model cannot change when a run continues (model.charset)" in capsys.readouterr().err


def test_diverging_run_stops_before_writing_non_finite_weights(words, tmp_path, monkeypatch, capsys):
    cfg = tiny_run_config(tmp_path, words, max_steps=12, lr=1e9, checkpoint_every_steps=1, val_every_steps=100,
                          warmup=0)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(cfg), "--output", "nan", "--quiet"]) == 1
    err = capsys.readouterr().err
    match = re.search(r"step (\d+): the (loss is (nan|inf)|gradients are not finite)", err)
    assert match, err[-2000:]
    assert "Nothing non-finite was written" in err and "lower train.lr" in err
    last = tmp_path / "nan" / "checkpoints" / "last.ckpt"
    assert f"{Path('nan/checkpoints/last.ckpt')} (step {int(match.group(1)) - 1}) is the last good" in err
    ckpt = torch.load(last, weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "weights").exists()


def test_finetune_refuses_nan_weights_and_a_config_that_lies(words, bad_weights, tmp_path, monkeypatch, capsys):
    cfg = tiny_run_config(tmp_path, words, max_steps=1)
    monkeypatch.chdir(tmp_path)
    for name, message in (("nan.safetensors", "tensor 'head.bias' holds 1 NaN"),
                          ("liar.safetensors", "tensor 'embed.weight' has shape (39, 128), but the model its "
                                               "config describes (charset of 62)")):
        assert main(["train", "--config", str(cfg), "--finetune", str(tmp_path / name), "--output", f"ft-{name}",
                     "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / f"ft-{name}").exists()


def test_training_settings_are_honoured_and_said(words, tmp_path, monkeypatch, capsys, caplog):
    import logging

    cfg = tiny_run_config(tmp_path, words, max_steps=2, warmup=50, num_threads="auto", progress_refresh=1,
                          val_every_steps=100)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    caplog.set_level(logging.INFO)
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--config", str(cfg), "--output", "run", "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "CPU: 1 compute thread(s) per process (from OMP_NUM_THREADS)" in caplog.text
    assert "train.warmup=50 is 50 steps, longer than half of this 2-step run: warm-up cut to 1 steps" in caplog.text
    assert "it/s" not in err and "Epoch 0" not in err                   # --quiet: no progress bar
    assert main(["train", "--config", str(cfg), "train.accelerator=gpu", "--output", "gpu", "--quiet"]) == (
        0 if torch.cuda.is_available() else 2)
    if not torch.cuda.is_available():
        assert "train.accelerator=gpu: this torch is built for CPU only" in capsys.readouterr().err
    assert main(["train", "--config", str(cfg), "data.train=[{path: x", "--output", "y"]) == 2
    assert "the value is not valid YAML" in capsys.readouterr().err
