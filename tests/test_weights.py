"""masterocr.weights: safetensors round trips, bundled names, weights-only checkpoints, charset finetuning."""

import json
import pickle

import pytest
import torch

from masterocr import weights as W
from masterocr.config import load_config, to_dict
from masterocr.models import build_model


def tiny_cfg(charset="abcdef", **extra):
    cfg = to_dict(load_config("master-tiny", [f"model.charset={charset}", "model.max_label_length=8"]))["model"]
    cfg.update(extra)
    return cfg


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = model.img_size
    images = torch.randn(2, model.in_channels, h, w, generator=g)
    targets = model.tokenizer.encode(["abc", "fed"])[:, :-1]
    with torch.no_grad():
        return model.eval()(images, targets)


@pytest.fixture(scope="module")
def model_and_cfg():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    return build_model(cfg).eval(), cfg


def test_fp32_round_trip_is_exact(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    path = W.save_weights(model, cfg, tmp_path / "m.safetensors")
    loaded, loaded_cfg = W.load_model(path)
    assert loaded_cfg["charset"] == "abcdef"
    assert not loaded.training
    assert torch.equal(outputs(model), outputs(loaded))


def test_fp16_round_trip_matches_fp16_rounded_weights(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    path = W.save_weights(model, cfg, tmp_path / "m16.safetensors", dtype="fp16")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys() if f.get_tensor(k).is_floating_point())
    loaded, _ = W.load_model(path)
    assert next(loaded.parameters()).dtype == torch.float32  # cast back on load
    rounded = build_model(cfg)
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v
                             for k, v in model.state_dict().items()})
    assert torch.equal(outputs(rounded), outputs(loaded))
    assert torch.allclose(outputs(model), outputs(loaded), atol=5e-2)
    assert path.stat().st_size < 0.6 * (W.save_weights(model, cfg, tmp_path / "m32.safetensors").stat().st_size)


def test_config_in_metadata_and_sidecar_with_literal_charset(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    cfg94 = dict(cfg, charset="94")
    model94 = build_model(cfg94)
    path = W.save_weights(model94, cfg94, tmp_path / "m.safetensors", extra={"step": 7})
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["model"]["charset"] == model94.tokenizer.charset and len(side["model"]["charset"]) == 94
    assert side["extra"] == {"step": 7} and side["dtype"] == "float32"
    # The metadata alone suffices: the sidecar is for people and tools.
    (tmp_path / "m.json").unlink()
    _, meta_cfg = W.read_safetensors(path)
    assert meta_cfg == side["model"]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_bundled_names(model_and_cfg, tmp_path, monkeypatch):
    model, cfg = model_and_cfg
    monkeypatch.setattr(W, "BUNDLED_DIR", tmp_path)
    assert W.bundled_names() == []
    W.save_weights(model, cfg, tmp_path / "tiny-abc.safetensors")
    assert W.bundled_names() == ["tiny-abc"]
    loaded, _ = W.load_model("tiny-abc")
    assert torch.equal(outputs(model), outputs(loaded))
    with pytest.raises(FileNotFoundError, match="tiny-abc"):
        W.load_model("no-such-model")


def test_checkpoint_import_and_ema_preference(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            W.CKPT_CONFIG_KEY: {"model": cfg, "train": {"lr": 1e-3}},
            W.CKPT_EMA_KEY: ema, "global_step": 3}
    torch.save(ckpt, tmp_path / "run.ckpt")
    raw, _ = W.load_model(tmp_path / "run.ckpt", use_ema=False)
    assert torch.equal(outputs(model), outputs(raw))
    averaged, _ = W.load_model(tmp_path / "run.ckpt")
    assert torch.equal(averaged.head.bias, ema["head.bias"])


class _Exploit:
    """Pickles to a call of os.system: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_loading_never_runs_code(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    marker = tmp_path / "pwned"
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            W.CKPT_CONFIG_KEY: {"model": cfg}, "payload": _Exploit(marker)}
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump(ckpt, f, protocol=2)  # torch.load reads legacy pickles too: the unsafe path, were it not refused
    with pytest.raises(W.WeightsError, match="evil.ckpt"):
        W.load_model(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_bad_files_raise_clear_errors(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(W.WeightsError, match="junk.safetensors"):
        W.load_model(junk)
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    with pytest.raises(W.WeightsError, match="empty.ckpt"):
        W.load_model(empty)


def test_finetune_with_other_charset_copies_shared_rows(model_and_cfg, tmp_path):
    src_model, src_cfg = model_and_cfg  # charset "abcdef"
    path = W.save_weights(src_model, src_cfg, tmp_path / "src.safetensors")
    torch.manual_seed(1)
    dst = build_model(tiny_cfg(charset="xbaqf"))  # shares b, a, f; x and q are new
    fresh = {k: v.clone() for k, v in dst.state_dict().items()}
    stats = W.load_for_finetune(dst, path)
    assert stats == {"shared_chars": 3, "new_chars": 2, "remapped_tensors": 3}  # embed, head weight + bias

    src_tok, dst_tok = src_model.tokenizer, dst.tokenizer
    src_state, dst_state = src_model.state_dict(), dst.state_dict()
    for key in ("head.weight", "head.bias", "embed.weight"):
        for ch in "baf":
            assert torch.equal(dst_state[key][dst_tok.charset.index(ch) + 1], src_state[key][src_tok.charset.index(ch) + 1])
        for ch in "xq":  # new characters keep their fresh initialisation
            row = dst_tok.charset.index(ch) + 1
            assert torch.equal(dst_state[key][row], fresh[key][row])
        assert torch.equal(dst_state[key][dst_tok.eos_id], src_state[key][src_tok.eos_id])
    for special in ("bos_id", "pad_id"):
        assert torch.equal(dst_state["embed.weight"][getattr(dst_tok, special)],
                           src_state["embed.weight"][getattr(src_tok, special)])
    for key, value in dst_state.items():
        if key not in ("head.weight", "head.bias", "embed.weight"):
            assert torch.equal(value, src_state[key]), key


def test_finetune_rejects_another_architecture(model_and_cfg, tmp_path):
    src_model, src_cfg = model_and_cfg
    path = W.save_weights(src_model, src_cfg, tmp_path / "src.safetensors")
    other = build_model(tiny_cfg(ffn_dim=256))
    with pytest.raises(W.WeightsError, match="shape"):
        W.load_for_finetune(other, path)


def test_average_is_the_mean_and_refuses_another_model(tmp_path, capsys):
    from masterocr.cli.main import main as cli_main

    cfg = tiny_cfg()
    paths = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        paths.append(W.save_weights(build_model(cfg), cfg, tmp_path / f"m{seed}.safetensors",
                                    extra={"keep_aspect": True}))
    out = tmp_path / "soup.safetensors"
    assert cli_main(["average", *map(str, paths), "--output", str(out), "--note", "three seeds"]) == 0
    soup, soup_cfg = W.read_weights(out)
    parts = [W.read_weights(p)[0] for p in paths]
    assert soup_cfg == W.read_weights(paths[0])[1]
    for key, value in soup.items():
        if value.is_floating_point():
            assert torch.allclose(value, sum(p[key] for p in parts) / 3, atol=1e-6), key
        else:
            assert torch.equal(value, parts[0][key]), key
    extra = json.loads(W.sidecar_path(out).read_text())["extra"]
    assert extra["keep_aspect"] is True and extra["note"] == "three seeds" and len(extra["averaged_from"]) == 3

    other_cfg = tiny_cfg("abcdefg")
    other = W.save_weights(build_model(other_cfg), other_cfg, tmp_path / "other.safetensors")
    assert cli_main(["average", str(paths[0]), str(other), "--output", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "other.safetensors" in err and "charset" in err
    assert not (tmp_path / "bad.safetensors").exists()
