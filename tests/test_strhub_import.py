"""strhub import: our PARSeq and ViTSTR reproduce strhub's own logits on strhub's weights.

tests/data/strhub_fixture.pt was made by running strhub's code (baudm/parseq, outside this repository) on
tiny configs with random weights: the checkpoints (PARSeq as a Lightning checkpoint with hyper-parameters,
2 encoder and 2 decoder layers; ViTSTR as a state dict + hyper-parameters), 5 input images, and strhub's
logits for AR, AR + 1 refinement, NAR, NAR + 2 refinements, ViTSTR, and 6 training permutations.
"""

from pathlib import Path

import pytest
import torch

from masterocr.cli.main import main as cli_main
from masterocr.decoding import decode
from masterocr.training.plm import additive, order_masks
from masterocr.weights import load_model

FIXTURE = Path(__file__).parent / "data" / "strhub_fixture.pt"
ATOL = 2e-4


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def imported(fixture, tmp_path, key="parseq_ckpt", name="parseq.ckpt"):
    src = tmp_path / name
    torch.save(fixture[key], src)
    out = tmp_path / (name + ".safetensors")
    assert cli_main(["import", "strhub", str(src), "-o", str(out)]) == 0
    model, cfg = load_model(out)
    return model, cfg


def images_of(fixture):
    return fixture["parseq_outputs"]["images_uint8"].float() / 255 * 2 - 1  # strhub's Normalize(0.5, 0.5)


def until_eos(ids, eos):
    """Token lists up to and including each row's first EOS."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def test_parseq_reproduces_strhub_logits(fixture, tmp_path, capsys):
    model, cfg = imported(fixture, tmp_path)
    assert "parseq (0." in capsys.readouterr().out
    assert cfg["encoder_depth"] == 2 and cfg["decoder_depth"] == 2 and cfg["decoder_heads"] == 4
    out = fixture["parseq_outputs"]
    images = images_of(fixture)
    eos = model.tokenizer.eos_id
    with torch.no_grad():
        memory = model.encode(images)
        bos = torch.full((5, 1), model.tokenizer.bos_id)
        # AR: the canonical order over strhub's own choices gives strhub's logits at every step.
        ar = out["logits_ar"]
        logits, _ = model.decode_full(memory, torch.cat([bos, ar.argmax(-1)[:, :-1]], 1))
        torch.testing.assert_close(logits, ar, rtol=0, atol=ATOL)
        # One cloze pass over that reading.
        refined, _ = model.refine(memory, ar.argmax(-1))
        torch.testing.assert_close(refined, out["logits_ar_refine1"], rtol=0, atol=ATOL)
        # NAR, then two cloze passes.
        nar, _ = model.decode_parallel(memory, 9)
        torch.testing.assert_close(nar, out["logits_nar"], rtol=0, atol=ATOL)
        ids = nar.argmax(-1)
        for _ in range(2):
            step, _ = model.refine(memory, ids)
            ids = step.argmax(-1)
        torch.testing.assert_close(step, out["logits_nar_refine2"], rtol=0, atol=ATOL)
        # Training: strhub's permutations and masks, with padding, give strhub's logits.
        tok = model.tokenizer
        tgt = tok.encode(out["plm_labels"])[:, :9]
        context = tgt[:, :-1]
        padding = (context == tok.pad_id) | (context == eos)
        memory_kv = model.memory_kv(memory[:4])
        for order, expected in zip(out["plm_orders"], out["plm_logits"]):
            content, query = order_masks(order)
            logits, _ = model.decode_masked(memory_kv, context, additive(query), additive(content), padding)
            torch.testing.assert_close(logits, expected, rtol=0, atol=ATOL)
    # The shared decoder's readings are strhub's (its loop without early stop; ours drops ended rows).
    for key, kwargs in [("logits_ar", {"refine_iters": 0}), ("logits_ar_refine1", {"refine_iters": 1}),
                        ("logits_nar", {"method": "nar", "refine_iters": 0}),
                        ("logits_nar_refine2", {"method": "nar", "refine_iters": 2})]:
        ours = decode(model, images, need_attention=False, **kwargs).token_ids
        assert until_eos(ours, eos) == until_eos(out[key].argmax(-1), eos), key


def test_vitstr_reproduces_strhub_logits(fixture, tmp_path):
    model, cfg = imported(fixture, tmp_path, "vitstr_ckpt", "vitstr.ckpt")
    assert cfg["name"] == "vitstr" and cfg["depth"] == 2 and cfg["num_heads"] == 2
    images = images_of(fixture)
    with torch.no_grad():
        logits, _ = model.decode_parallel(model.encode(images), 9)
    torch.testing.assert_close(logits, fixture["parseq_outputs"]["vitstr_logits"], rtol=0, atol=ATOL)
    assert decode(model, images).token_ids.shape == (5, 9)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["state_dict"].__setitem__("model.extra.weight", torch.zeros(2)), "'extra.weight'"),
    (lambda c: c["state_dict"].pop("model.decoder.layers.1.norm_c.bias"), "decoder.layers.1.norm_c.bias"),
    (lambda c: c["hyper_parameters"].__setitem__("max_label_length", 12), "'pos_queries' has shape"),
    (lambda c: c["hyper_parameters"].__setitem__("dec_depth", 3), "dec"),
    (lambda c: c["hyper_parameters"].__setitem__("temperature", 2.0), "'temperature'"),
    (lambda c: c["hyper_parameters"].__setitem__("charset_train", "abc"), "'charset_train'"),
])
def test_mismatches_fail_naming_the_key(fixture, tmp_path, capsys, change, message):
    import copy

    ckpt = copy.deepcopy(fixture["parseq_ckpt"])
    change(ckpt)
    torch.save(ckpt, tmp_path / "bad.ckpt")
    assert cli_main(["import", "strhub", str(tmp_path / "bad.ckpt"), "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "bad.ckpt" in err and message in err
    assert not (tmp_path / "x.safetensors").exists()


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_payload_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {"pos_queries": torch.zeros(1, 2, 4)}, "evil": Payload()}, tmp_path / "evil.ckpt")
    assert cli_main(["import", "strhub", str(tmp_path / "evil.ckpt"), "-o", str(tmp_path / "x.safetensors")]) == 2
    captured = capsys.readouterr()
    assert "evil.ckpt: refused" in captured.err and "this must never run" not in captured.out


def test_released_state_dict_layout_infers_parseq_tiny(tmp_path):
    """A state dict as strhub releases them (no hyper-parameters, no prefix): sizes from the shapes, heads and
    input size from strhub's layouts. Made here from our parseq-tiny by the inverse key map."""
    from masterocr.config import load_config, to_dict
    from masterocr.importers import run_importer
    from masterocr.models import build_model

    torch.manual_seed(0)
    ours = build_model(load_config("parseq-tiny").model)
    theirs = {}
    for key, value in ours.state_dict().items():
        if key.startswith("encoder.") or key in ("pos_queries", "head.weight", "head.bias"):
            theirs[key] = value
        elif key.startswith("norm."):
            theirs["decoder." + key] = value
        elif key == "embed.weight":
            theirs["text_embed.embedding.weight"] = value
        else:
            layer, rest = key.split(".", 2)[1], key.split(".", 2)[2]
            rest = rest.replace("mlp.fc1", "linear1").replace("mlp.fc2", "linear2")
            if ".q_proj." in rest or ".k_proj." in rest or ".v_proj." in rest:
                attn, proj, kind = rest.split(".")
                if proj == "q_proj":
                    parts = [ours.state_dict()[f"decoder.{layer}.{attn}.{p}.{kind}"] for p in
                             ("q_proj", "k_proj", "v_proj")]
                    theirs[f"decoder.layers.{layer}.{attn}.in_proj_{kind}"] = torch.cat(parts)
                continue
            theirs[f"decoder.layers.{layer}.{rest}"] = value
    torch.save(theirs, tmp_path / "parseq_tiny-released.pt")
    result = run_importer("strhub", tmp_path / "parseq_tiny-released.pt")
    expected = to_dict(load_config("parseq-tiny").model)
    for key in ("embed_dim", "encoder_heads", "decoder_heads", "encoder_depth", "img_size", "patch_size",
                "max_label_length"):
        assert result.model_cfg[key] == expected[key], key
    from masterocr.charset import BUILTIN_CHARSETS

    assert result.model_cfg["charset"] == BUILTIN_CHARSETS["94"]  # strhub's 94 characters, in our order too
    for key, value in ours.state_dict().items():
        assert torch.equal(result.tensors[key], value), key
