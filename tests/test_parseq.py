"""PARSeq: sizes, permutation masks, cached == full decoding, NAR and cloze refinement, PLM loss, overfitting."""

import pytest
import torch
from parseq_tiny import WORDS, build, trained_parseq, word_images

from masterocr.config import load_config
from masterocr.decoding import check_decoding, decode
from masterocr.models import build_model
from masterocr.training.objectives import build_objective
from masterocr.training.plm import order_masks, permutations


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, params, grid", [
    ("parseq", 23_832_671, (8, 16)),          # strhub's count for PARSeq-S
    ("parseq-tiny", 6_018_143, (8, 16)),
    ("parseq-patch16-224", 24_116_831, (14, 14)),
])
def test_variants_sizes_and_shapes(name, params, grid):
    torch.manual_seed(0)
    model = build_model(load_config(name).model).eval()
    assert count(model) == params
    assert model.feature_size() == grid and model.max_steps == 26 and model.num_classes == 95
    if name != "parseq-tiny":
        return
    images = torch.randn(2, 3, *model.img_size)
    with torch.no_grad():
        memory = model.encode(images)
        assert memory.shape == (2, 128, 192)
        tokens = model.tokenizer.encode(["ab", "xyz"])[:, :4]  # (2, 4) BOS c c c/EOS
        assert model(images, tokens).shape == (2, 4, 95)
        logits, attn = model.decode_parallel(memory, 26, need_weights=True)
        assert logits.shape == (2, 26, 95) and attn.shape == (2, 26, 128)
    with pytest.raises(ValueError, match="32x128"):
        model.encode(torch.randn(1, 3, 32, 100))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="encoder_layers"):
        build_model(load_config("parseq-tiny", ["model.encoder_layers=2"]).model)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        build_model(load_config("parseq-tiny", ["model.img_size=[32,100]"]).model)


# ---- permutations and masks --------------------------------------------------------------------------------

def test_canonical_order_gives_causal_masks():
    for n in (1, 3, 9):
        content, query = order_masks(permutations(n, 6)[0])
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool).triu(1)
        assert torch.equal(content, causal) and torch.equal(query, causal)


def test_orders_canonical_first_reverse_with_eos_first_then_mirrored_pairs():
    torch.manual_seed(0)
    for n in (2, 3, 4, 5, 12):
        orders = permutations(n, 6)
        k = len(orders)
        assert k == (2 if n == 2 else 6)
        assert orders[0].tolist() == list(range(n + 2))
        assert orders[1].tolist() == [0] + list(range(n + 1, 0, -1))  # EOS first: the null context
        assert (orders[:, 0] == 0).all() and (orders[2:, -1] == n + 1).all()
        chars = orders[2:, 1:-1]
        assert torch.equal(chars[1::2], chars[0::2].flip(-1))  # mirrored pairs
        pairs = {tuple(min(p, p[::-1])) for p in chars[0::2].tolist()}
        assert len(pairs) == len(chars) // 2 and tuple(range(1, n + 1)) not in pairs  # no repeats
        assert sorted(orders[2:].reshape(-1).tolist()) == sorted(list(range(n + 2)) * (k - 2))
    assert len(permutations(2, 6)) == 2 and len(permutations(3, 6)) == 6 and len(permutations(1, 6)) == 1


def test_order_masks_follow_the_order():
    order = torch.tensor([0, 3, 1, 4, 2, 5])  # BOS, then characters 3, 1, 4, 2, then EOS (position 5)
    content, query = order_masks(order)
    rank = {p: i for i, p in enumerate(order.tolist())}
    for t in range(5):  # query t predicts position t + 1
        seen = [b for b in range(5) if not query[t, b]]
        assert seen == [b for b in range(5) if rank[b] < rank[t + 1]]
    for a in range(5):
        assert [b for b in range(5) if not content[a, b]] == [b for b in range(5) if rank[b] <= rank[a]]


def test_plm_with_one_order_is_teacher_forcing():
    model, _ = build(seed=1)
    model.eval()
    images = torch.randn(3, 3, 32, 64)
    labels = ["ab", "hello", "x"]
    plm = build_objective(model, {"plm_permutations": 1})
    from masterocr.training.objectives import TeacherForcing

    with torch.no_grad():
        a, parts = plm(model, images, labels)
        b, _ = TeacherForcing(model, {})(model, images, labels)
        six, _ = build_objective(model, {"plm_permutations": 6})(model, images, labels)
    assert a.item() == pytest.approx(b.item(), rel=1e-5) and set(parts) == {"plm"}
    assert six.item() != pytest.approx(a.item(), rel=1e-4)
    with pytest.raises(ValueError, match="plm_permutations"):
        build_objective(model, {"plm_permutations": 0})


# ---- decoding ------------------------------------------------------------------------------------------------

def random_double(seed: int, images: torch.Tensor, decoder_depth: int = 2):
    """A random PARSeq in float64 with weights scaled up so readings vary by image, and an EOS bias raised
    until the words in `images` end at different lengths."""
    model, _ = build(seed=seed, decoder_depth=decoder_depth)
    model = model.eval().double()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
        model.pos_queries.normal_(0, 1)
        model.embed.weight.normal_(0, 0.1)
        model.head.bias.zero_()
    for _ in range(40):
        lengths = sorted(len(d.text) for d in decode(model, images, refine_iters=0).decoded(model.tokenizer))
        if len(set(lengths)) > 2:
            return model
        with torch.no_grad():
            model.head.bias[model.tokenizer.eos_id] += 0.2
    raise AssertionError("no EOS bias gave mixed lengths")


@pytest.mark.parametrize("decoder_depth", [1, 2])
def test_ar_cached_equals_full_recompute(decoder_depth):
    images = torch.randn(8, 3, 32, 64, dtype=torch.float64)
    model = random_double(3, images, decoder_depth)
    cached = decode(model, images, refine_iters=0)
    full = decode(model, images, use_cache=False, refine_iters=0)
    lengths = [len(d.text) for d in cached.decoded(model.tokenizer)]
    assert len(set(lengths)) > 2  # rows end at different steps (dropped from the running batch)
    assert torch.equal(cached.token_ids, full.token_ids)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached.attention, full.attention, rtol=0, atol=1e-10)
    assert cached.attention.shape == (8, cached.token_ids.shape[1], 8, 8)  # (H/ph, W/pw)
    beam1 = decode(model, images, method="beam", beam_width=1, refine_iters=0)
    assert torch.equal(beam1.token_ids, cached.token_ids)
    beam = decode(model, images, method="beam", beam_width=4, refine_iters=0)
    assert (beam.scores >= cached.scores - 1e-9).all()  # beam search never scores below greedy


def test_nar_and_refinement():
    images = torch.randn(5, 3, 32, 64, dtype=torch.float64)
    model = random_double(4, images)
    nar = decode(model, images, method="nar", refine_iters=0)
    memory = model.encode(images)
    with torch.no_grad():
        logits, _ = model.decode_parallel(memory, model.max_steps)
    assert torch.equal(nar.token_ids[:, 0], logits.argmax(-1)[:, 0])
    refined = decode(model, images, method="nar", refine_iters=2)
    assert refined.attention.shape[2:] == (8, 8) and refined.token_ids.shape[0] == 5
    # Refinement reads the previous output only up to its first EOS: what follows it changes nothing.
    ids = nar.token_ids.clone()
    eos = model.tokenizer.eos_id
    ids[:, 3] = eos
    other = ids.clone()
    other[:, 4:] = torch.randint(1, 30, other[:, 4:].shape)
    with torch.no_grad():
        a, _ = model.refine(memory, ids)
        b, _ = model.refine(memory, other)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # The default (the model's refine_iters, 1) is one pass after AR decoding.
    assert torch.equal(decode(model, images).token_ids,
                       decode(model, images, refine_iters=1).token_ids)


def test_models_without_a_capability_say_so():
    master = build_model(load_config("master-tiny").model)
    with pytest.raises(ValueError, match="Master has no non-autoregressive decoder"):
        check_decoding(master, "nar")
    with pytest.raises(ValueError, match="Master has no cloze refinement"):
        decode(master, torch.randn(1, 3, 48, 160), refine_iters=1)
    model, _ = build()
    check_decoding(model, "nar", 3)
    with pytest.raises(ValueError, match="choose one of"):
        check_decoding(model, "sampling")


# ---- learning ------------------------------------------------------------------------------------------------

def test_overfits_a_few_dozen_rendered_words():
    """PLM training reads every word back with AR and with NAR decoding (each + one refinement)."""
    model_cfg, state, steps = trained_parseq()
    model = build_model(model_cfg)
    model.load_state_dict(state)
    images = word_images()
    for method in ("greedy", "nar", "beam"):
        result = decode(model, images, method=method)
        assert [d.text for d in result.decoded(model.tokenizer)] == WORDS, method
    assert steps <= 400


# ---- the shared training engine ------------------------------------------------------------------------------

def test_masterocr_train_parseq_with_ema_aux_ctc_validation_checkpoints_and_resume(tmp_path, capsys):
    """`masterocr train` on a parseq-tiny: PLM loss through the shared Lightning module, EMA, auxiliary CTC on
    the ViT memory, validation decoding, checkpoints, --resume, and exported weights that read."""
    import json

    from wordimages import render_word

    from masterocr.cli.main import main as cli_main
    from masterocr.weights import load_model

    words = WORDS[:6]
    (tmp_path / "data" / "images").mkdir(parents=True)
    for i, word in enumerate(words):
        render_word(word).save(tmp_path / "data" / "images" / f"{i}.png")
    (tmp_path / "data" / "labels.tsv").write_text("".join(f"images/{i}.png\t{w}\n" for i, w in enumerate(words)))
    cfg = {"base": "parseq-tiny",
           "model": {"charset": "36", "max_label_length": 8, "img_size": [32, 64], "encoder_depth": 2},
           "data": {"train": [{"path": str(tmp_path / "data")}],
                    "val": [{"name": "words", "path": str(tmp_path / "data")}], "augment": "none", "num_workers": 0},
           "train": {"batch_size": 6, "max_steps": 4, "lr": 1e-3, "lr_scaling": "none", "warmup": 1, "schedule": "cosine",
                     "val_every_steps": 2, "checkpoint_every_steps": 2, "log_every_steps": 1, "progress_refresh": 0,
                     "num_sanity_val_steps": 0, "num_threads": 1, "ema": True, "ema_decay": 0.5,
                     "aux_ctc_weight": 0.3, "plm_permutations": 4}}
    path = tmp_path / "parseq.yaml"
    path.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(path), "--output", str(run), "--quiet"]) == 0
    summary = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert summary["global_step"] == 4 and summary["best_score"] is not None
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("objective.aux_ctc.") for k in ckpt["state_dict"])
    assert "masterocr_ema_state_dict" in ckpt
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "train/plm" in metrics and "train/ctc" in metrics and "val/words/acc" in metrics

    assert cli_main(["train", "--resume", str(run / "checkpoints" / "last.ckpt"), "train.max_steps=6",
                     "--quiet"]) == 0
    summary = json.loads([line for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1])
    assert summary["global_step"] == 6
    model, model_cfg = load_model(run / "weights" / "final.safetensors")  # strict: no aux head inside
    assert model_cfg["name"] == "parseq" and model_cfg["encoder_depth"] == 2
    ema = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["masterocr_ema_state_dict"]
    assert torch.equal(model.head.bias, ema["head.bias"])
    result = decode(model, word_images(words), method="nar", refine_iters=2)
    assert result.token_ids.shape[0] == 6


def test_bundled_parseq_recipe_selects_on_held_out_training_data_only():
    from masterocr.training.runner import resolve_run_config

    cfg = resolve_run_config("bundled-parseq-cpu")
    train, val = cfg.data.train, cfg.data.val
    assert cfg.model.name == "parseq" and cfg.train.precision == "bf16-mixed" and cfg.train.ema
    iiit_train = [s for s in train if "IIIT5K" in str(s.get("path"))]
    iiit_val = [s for s in val if "IIIT5K" in str(s.path)]
    assert len(iiit_train) == len(iiit_val) == 1 and iiit_train[0].holdout == iiit_val[0].holdout
    paths = [str(s.get("path")) for s in list(train) + list(val)]
    assert not any("/test" in p for p in paths)


def test_info_gives_parts_and_gflops_for_ar_and_nar(capsys):
    import json

    from masterocr.cli.main import main as cli_main

    assert cli_main(["info", "parseq-tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 6_018_143 and sum(info["parameters_per_part"].values()) == 6_018_143
    assert set(info["parameters_per_part"]) == {"encoder", "decoder", "head"}
    g = info["gflops_per_image"]
    assert g["AR read + 1 refinement (total)"] > g["NAR read + 1 refinement (total)"] > g["encoder"] > 1.0
    assert info["memory"] == {"feature_map": [8, 16], "tokens": 128}
