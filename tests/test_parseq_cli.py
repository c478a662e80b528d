"""PARSeq through the one reading path: read / eval --decode greedy|beam|nar --refine N, load(), bad input."""

import pytest
import torch
from parseq_tiny import WORDS, trained_parseq
from wordimages import render_word

import masterocr
from masterocr.cli.main import main as cli_main


@pytest.fixture(scope="module")
def parseq_weights(tmp_path_factory):
    from masterocr.weights import save_weights

    model_cfg, state, _ = trained_parseq()
    path = tmp_path_factory.mktemp("parseq") / "parseq-test.safetensors"
    save_weights(state, model_cfg, path)
    return path


@pytest.fixture(scope="module")
def word_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("words")
    (folder / "images").mkdir()
    words = WORDS[:8]
    for i, word in enumerate(words):
        render_word(word).save(folder / "images" / f"{i}.png")
    (folder / "labels.tsv").write_text("".join(f"images/{i}.png\t{w}\n" for i, w in enumerate(words)))
    return folder, words


@pytest.mark.parametrize("options", [[], ["--decode", "nar"], ["--decode", "nar", "--refine", "2"],
                                     ["--decode", "beam", "--refine", "0"]])
def test_read_cli_decode_options(parseq_weights, word_folder, capsys, options):
    folder, words = word_folder
    (folder / "broken.png").write_bytes(b"not an image")
    code = cli_main(["read", str(folder / "images"), str(folder / "broken.png"), "--model", str(parseq_weights),
                     *options])
    out, err = capsys.readouterr()
    assert [line.split("\t")[1] for line in out.splitlines()] == words
    assert code == 1 and "broken.png" in err and "1 of 9 input(s) failed" in err  # bad input: as for MASTER


def test_eval_cli_nar(parseq_weights, word_folder, capsys):
    folder, words = word_folder
    assert cli_main(["eval", str(parseq_weights), "--data", str(folder), "--decode", "nar", "--refine", "1",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("| words")][0]  # the dataset's row
    assert [c.strip() for c in row.split("|")][2:4] == ["8", "100.00"]  # samples, accuracy


def test_python_api_decode_options_and_attention(parseq_weights, word_folder):
    folder, words = word_folder
    images = [str(folder / "images" / f"{i}.png") for i in range(len(words))]
    for method, refine in [("greedy", None), ("nar", 1)]:  # the two readings the model was trained to
        rec = masterocr.load(parseq_weights, decode_method=method, refine_iters=refine)
        assert rec.refine_iters == refine
        results = rec.read(images)
        assert [r.text for r in results] == words
        assert results[0].attention.shape == (len(words[0]), 8, 8)  # per character, (H/ph, W/pw)
        assert 0 < results[0].confidence <= 1
    with pytest.raises(ValueError, match="refine_iters=-1"):
        masterocr.load(parseq_weights, refine_iters=-1)


def test_models_without_nar_or_refinement_are_named(tmp_path, capsys):
    from masterocr.config import load_config, to_dict
    from masterocr.models import build_model
    from masterocr.weights import save_weights

    torch.manual_seed(0)
    cfg = to_dict(load_config("master-tiny").model)
    path = save_weights(build_model(cfg), cfg, tmp_path / "master-tiny.safetensors")
    render_word("cat").save(tmp_path / "cat.png")
    assert cli_main(["read", str(tmp_path / "cat.png"), "--model", str(path), "--decode", "nar"]) == 2
    assert "Master has no non-autoregressive decoder" in capsys.readouterr().err
    assert cli_main(["read", str(tmp_path / "cat.png"), "--model", str(path), "--refine", "1"]) == 2
    assert "Master has no cloze refinement" in capsys.readouterr().err
