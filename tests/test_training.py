"""Training: samplers, schedule, loss, atomic checkpoints, overfitting a tiny set, SIGKILL + exact resume, DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from wordimages import render_words

from masterocr.cli.main import main as cli_main
from masterocr.config import load_config, to_dict
from masterocr.models import build_model
from masterocr.training.callbacks import AtomicCheckpointIO
from masterocr.training.data import MixedBatchSampler, ResumableLoader, ShardSampler, ShortWordsFirst, sample_seed
from masterocr.training.module import RecognitionModule, charset_protocol, sample_sheet
from masterocr.training.optim import EMA, build_scheduler, scaled_lr, warmup_cosine
from masterocr.weights import load_model

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "sun", "red", "map", "box"]


def tiny_config(tmp: Path, data: Path, **train) -> Path:
    """A master-tiny run config on `data` (trained and validated on it), as a YAML file."""
    t = {"batch_size": 6, "max_steps": 40, "lr": 1e-3, "lr_scaling": "none", "warmup": 3, "val_every_steps": 20,
         "checkpoint_every_steps": 20, "log_every_steps": 1, "progress_refresh": 0, "num_sanity_val_steps": 0,
         "num_threads": 1}
    t.update(train)
    cfg = {"base": "master-tiny",
           "model": {"charset": "36", "max_label_length": 8, "img_size": [32, 96]},
           "data": {"train": [{"path": str(data)}], "val": [{"name": "train", "path": str(data)}],
                    "augment": "none", "num_workers": 0},
           "train": t}
    path = tmp / "tiny.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def words_dir(tmp_path_factory):
    return render_words(tmp_path_factory.mktemp("words"), WORDS)


def run_cli(args, **kwargs) -> subprocess.CompletedProcess | subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "masterocr.cli.main", "train", *map(str, args)]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, **kwargs)


def summary_of(stdout: str) -> dict:
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


# ---- sampling ----------------------------------------------------------------------------------------------

def test_mixed_sampler_is_deterministic_and_follows_ratios():
    sizes, weights = [100, 10, 50], [2.0, 1.0, 1.0]
    s = MixedBatchSampler(sizes, weights, batch_size=8, seed=3, epoch_size=400)
    assert s.draw_counts() == [200, 100, 100]
    first = list(s)
    assert first == list(MixedBatchSampler(sizes, weights, 8, seed=3, epoch_size=400))
    s.set_epoch(1)
    assert list(s) != first
    assert list(MixedBatchSampler(sizes, weights, 8, seed=4, epoch_size=400)) != first
    draws = s.epoch_indices(0)
    per_source = [int(((draws >= lo) & (draws < lo + n)).sum()) for lo, n in zip([0, 100, 110], sizes)]
    assert per_source == [200, 100, 100]
    small = draws[(draws >= 100) & (draws < 110)]
    assert torch.bincount(small - 100).tolist() == [10] * 10  # a small source repeats evenly, not at random


def test_sampler_shards_ranks_disjointly_and_skips_on_resume():
    sizes, weights = [64, 36], [1.0, 1.0]
    ranks = [MixedBatchSampler(sizes, weights, 5, seed=0, rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    keys = [key for r in ranks for batch in r for key in batch]  # (index, per-sample seed) of every draw
    assert len(set(keys)) == len(keys) == 3 * len(ranks[0]) * 5  # each epoch position goes to exactly one rank
    full = list(ranks[1])
    ranks[1]._skip_batches = 2
    assert list(ranks[1]) == full[2:]
    assert list(ranks[1]) == full  # the skip applies to one iteration only


def test_short_words_first_caps_early_batches_across_epochs():
    cap = ShortWordsFirst(batches=10, start_length=3, max_length=25)
    caps = [cap(b) for b in range(12)]
    assert caps[0] == 3 and caps[10:] == [None, None]
    assert all(a <= b for a, b in zip(caps[:10], caps[1:10])) and caps[9] < 25
    with pytest.raises(ValueError, match="start_length"):
        ShortWordsFirst(10, 0, 25)
    sizes, weights = [40], [1.0]
    plain = MixedBatchSampler(sizes, weights, 4, seed=1)  # 10 batches per epoch
    capped = MixedBatchSampler(sizes, weights, 4, seed=1, length_cap=ShortWordsFirst(15, 3, 25))
    assert [[k[:2] for k in b] for b in capped] == list(plain)  # same draws, cap added to the keys
    assert {len(k) for b in capped for k in b} == {3}
    capped.set_epoch(1)  # batches 10..19 of the run: capped until batch 15
    batches = list(capped)
    assert [len(b[0]) for b in batches] == [3] * 5 + [2] * 5
    assert batches[0][0][2] == cap.start + (25 - 3) * 10 // 15


def test_short_words_first_config():
    from masterocr.training.data import RecognitionData

    tokenizer = SimpleNamespace(charset="abc", max_length=25)

    def cap_of(data_cfg, **train):
        return RecognitionData({"data": data_cfg, "train": train}, tokenizer, (32, 100)).length_cap()

    assert cap_of({}) is None and cap_of({"short_words_first": {"steps": 0}}) is None
    cap = cap_of({"short_words_first": {"steps": 100, "start_length": 2}}, accumulate_grad_batches=2)
    assert (cap.batches, cap.start, cap.max_length) == (200, 2, 25)  # optimizer steps -> batches
    with pytest.raises(ValueError, match="data.short_words_first: unknown key"):
        cap_of({"short_words_first": {"step": 100}})


def test_loader_state_moves_to_next_epoch_at_epoch_end():
    sampler = MixedBatchSampler([20], [1.0], 4, seed=0)
    position = [0, 3]
    loader = ResumableLoader(list(range(20)), batch_sampler=sampler, position=lambda: tuple(position))
    assert loader.state_dict() == {"epoch": 0, "batches": 3, "seed": 0}
    position[1] = len(sampler)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["batches"] == 0
    from lightning.fabric.utilities.data import _set_sampler_epoch

    _set_sampler_epoch(loader, 3)  # what Lightning calls at every epoch start must reach the batch sampler
    assert sampler.epoch == 3
    loader.load_state_dict({"epoch": 2, "batches": 4, "seed": 0})
    sampler2 = MixedBatchSampler([20], [1.0], 4, seed=0)
    sampler2.set_epoch(2)
    assert list(sampler) == list(sampler2)[4:]


def test_shard_sampler_pads_but_marks_padding():
    for n, world in [(10, 3), (7, 2), (4, 4), (2, 3)]:
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        assert len({len(s) for s in shards}) == 1
        kept = sorted(i for s in shards for i, keep in s if keep)
        assert kept == list(range(n))


def _mixed_data(tmp: Path, words_dir: Path, **data) -> "RecognitionData":
    from masterocr.charset import AttentionTokenizer
    from masterocr.data.datasets import write_lmdb
    from masterocr.training.data import RecognitionData

    lmdb_dir = tmp / "lmdb"
    if not lmdb_dir.exists():
        write_lmdb(lmdb_dir, [((words_dir / "images" / f"{i}.png").read_bytes(), w) for i, w in enumerate(WORDS)])
    cfg = {"data": {"train": [{"path": str(lmdb_dir), "weight": 1}, {"path": str(words_dir), "weight": 1},
                              {"synthetic": {"length": 50, "seed": 1}, "weight": 2}],
                    "epoch_size": 40, "augment": "light", "num_workers": 0, **data},
           "train": {"batch_size": 8, "seed": 5}}
    return RecognitionData(cfg, AttentionTokenizer("36", 8), (32, 96))


def test_data_module_mixes_lmdb_folder_and_synthetic_by_ratio(tmp_path, words_dir):
    data = _mixed_data(tmp_path, words_dir)
    data.setup("fit")
    batches = list(data.train_dataloader())
    names = [n for _, _, batch_names in batches for n in batch_names]
    assert len(batches) == 5 and all(images.shape == (8, 3, 32, 96) for images, _, _ in batches)
    counts = {"lmdb": sum(":" in n and "lmdb" in n for n in names),
              "folder": sum(n.endswith(".png") for n in names), "synth": sum(n.startswith("synth:") for n in names)}
    assert counts == {"lmdb": 10, "folder": 10, "synth": 20}
    # Deterministic per seed, augmentation included, whatever the number of loader workers.
    again = _mixed_data(tmp_path, words_dir, num_workers=1)
    again.setup("fit")
    for (a, la, na), (b, lb, nb) in zip(batches, again.train_dataloader()):
        assert na == nb and la == lb and torch.equal(a, b)


def test_holdout_splits_a_source_between_training_and_validation(tmp_path):
    from masterocr.charset import AttentionTokenizer
    from masterocr.training.data import RecognitionData

    folder = render_words(tmp_path / "many", [f"{w}{i}" for i in range(5) for w in WORDS])  # 30 words
    holdout = {"fraction": 0.3, "seed": 1}
    cfg = {"data": {"train": [{"path": str(folder), "holdout": holdout}],
                    "val": [{"name": "held", "path": str(folder), "holdout": holdout}],
                    "augment": "none", "num_workers": 0, "epoch_size": 12},
           "train": {"batch_size": 4, "seed": 0}}
    data = RecognitionData(cfg, AttentionTokenizer("36", 8), (32, 96))
    data.setup("fit")
    train_labels = set(data.train_set.concat.datasets[0].labels)
    val_labels = set(data.val_sets[0][1].labels)
    assert not train_labels & val_labels and len(train_labels | val_labels) == 30
    assert 3 <= len(val_labels) <= 17
    bad = {**cfg, "data": {**cfg["data"], "val": [{"path": str(folder), "holdout": {"fraction": 2}}]}}
    with pytest.raises(ValueError, match="holdout fraction"):
        RecognitionData(bad, AttentionTokenizer("36", 8), (32, 96)).setup("validate")


def test_short_words_first_reaches_the_synthetic_share_of_a_run(tmp_path, words_dir):
    from masterocr.training.runner import with_defaults

    data_cfg = {"short_words_first": {"steps": 100, "start_length": 2}}
    assert with_defaults({"model": {"name": "master"}, "data": data_cfg}).data.short_words_first.steps == 100
    data = _mixed_data(tmp_path, words_dir, **data_cfg)
    data.setup("fit")
    pairs = [(n, label) for _, labels, names in data.train_dataloader() for n, label in zip(names, labels)]
    synth = [label for n, label in pairs if n.startswith("synth:")]
    assert len(synth) == 20 and all(1 <= len(label) <= 2 for label in synth)
    assert {label for n, label in pairs if not n.startswith("synth:")} == set(WORDS)  # real crops untouched


def test_sample_seeds_differ():
    seeds = {sample_seed(s, e, p) for s in range(3) for e in range(3) for p in range(200)}
    assert len(seeds) == 3 * 3 * 200


# ---- optimisation ------------------------------------------------------------------------------------------

def test_lr_scaling_and_schedules():
    assert scaled_lr(4e-4, 512, 512) == pytest.approx(4e-4)
    assert scaled_lr(4e-4, 128, 512, "sqrt") == pytest.approx(2e-4)
    assert scaled_lr(4e-4, 1024, 512, "linear") == pytest.approx(8e-4)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(1e-3, 1, 1, "cubic")
    assert warmup_cosine(0, 100, 10, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)
    for schedule in ("onecycle", "cosine"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=1e-3)
        sched = build_scheduler(opt, schedule, total_steps=100, warmup_steps=10, min_lr_ratio=0.01)
        lrs = []
        for _ in range(100):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert max(lrs) == pytest.approx(1e-3, rel=0.02)
        assert 8 <= lrs.index(max(lrs)) <= 11  # peak at the end of warm-up
        assert lrs[0] < 0.2e-3 and lrs[-1] < 0.05e-3


def test_time_budget_drives_the_cosine_and_refuses_onecycle():
    # The cosine follows whichever of steps or wall-clock time is further along.
    assert warmup_cosine(10, 1000, 10, 0.1, time_done=1.0) == pytest.approx(0.1)
    assert warmup_cosine(10, 1000, 10, 0.1, time_done=0.5) == pytest.approx(0.55)
    assert warmup_cosine(1000, 1000, 10, 0.1, time_done=0.2) == pytest.approx(0.1)
    assert warmup_cosine(5, 1000, 10, 0.1, time_done=0.9) == pytest.approx(0.6)  # warm-up stays step-based
    spent = [0.0]
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = build_scheduler(opt, "cosine", total_steps=1000, warmup_steps=2, min_lr_ratio=0.01,
                            time_done=lambda: spent[0])
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3, rel=1e-3)
    spent[0] = 1.0
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="max_time needs train.schedule=cosine"):
        build_scheduler(opt, "onecycle", 100, 10, time_done=lambda: 0.0)
    from masterocr.training.runner import max_time_delta

    assert max_time_delta(None) is None and max_time_delta(90).total_seconds() == 90
    with pytest.raises(ValueError, match="train.max_time=-5"):
        max_time_delta(-5)


def test_time_budget_ends_a_run_with_its_weights(tmp_path, words_dir):
    cfg = tiny_config(tmp_path, words_dir, max_steps=100_000, max_time=4, schedule="cosine", val_every_steps=10_000)
    out = tmp_path / "run"
    result = run_cli(["--config", cfg, "--output", out, "--quiet", "data.tall_turn=1.5"], timeout=300)
    assert result.returncode == 0, result.stderr
    summary = summary_of(result.stdout)
    assert 0 < summary["global_step"] < 100_000 and not summary["interrupted"]
    assert (out / "weights" / "final.safetensors").exists()
    # Trained with tall crops turned: the weights say so, and load() reads that way by default.
    from masterocr.recognizer import stored_preprocessing

    assert stored_preprocessing(out / "weights" / "final.safetensors")["orientation"] == "tall"


def test_ema_tracks_average():
    model = torch.nn.Linear(2, 1)
    w0 = model.weight.detach().clone()
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = min(0.5, 2 / 11)  # decay warms up as (1 + n) / (10 + n)
    assert torch.allclose(ema.shadow["weight"], d * w0 + (1 - d) * torch.ones(1, 2))
    backup = ema.copy_to(model)
    assert torch.allclose(model.weight, ema.shadow["weight"])
    model.load_state_dict(backup)
    assert torch.equal(model.weight, torch.ones(1, 2))


# ---- loss ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_cfg():
    return to_dict(load_config("master-tiny", ["model.charset=36", "model.max_label_length=8",
                                              "model.img_size=[32,96]"]))


def _module(cfg, **train):
    torch.manual_seed(0)
    model = build_model(cfg["model"]).eval()  # eval: no dropout, so losses compare exactly
    module = RecognitionModule(model, {"model": cfg["model"], "train": train})
    module.eval()
    return module


def test_loss_ignores_padding_and_smoothing_is_optional(tiny_model_cfg):
    module = _module(tiny_model_cfg)
    images = torch.randn(2, 3, 32, 96)
    labels = ["ab", "abcde"]
    with torch.no_grad():
        loss, parts = module.compute_loss(images, labels)
        targets = module.tokenizer.encode(labels)[:, :7]
        logits = module.model(images, targets[:, :-1])
        mask = targets[:, 1:] != module.tokenizer.pad_id
        manual = torch.nn.functional.cross_entropy(logits[mask], targets[:, 1:][mask])
        smoothed, _ = _module(tiny_model_cfg, label_smoothing=0.1).compute_loss(images, labels)
    assert mask.sum() == 3 + 6  # chars + EOS of each label, PAD excluded
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    assert set(parts) == {"ce"}
    assert smoothed.item() != pytest.approx(loss.item(), rel=1e-3)


def test_aux_ctc_adds_a_term_and_stays_out_of_the_model(tiny_model_cfg):
    plain = _module(tiny_model_cfg)
    joint = _module(tiny_model_cfg, aux_ctc_weight=0.5)
    images = torch.randn(2, 3, 32, 96)
    with torch.no_grad():
        ce, _ = plain.compute_loss(images, ["ab", "cd"])
        total, parts = joint.compute_loss(images, ["ab", "cd"])
    assert parts["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert parts["ctc"].item() > 0
    assert total.item() == pytest.approx(ce.item() + 0.5 * parts["ctc"].item(), rel=1e-5)
    assert not any(k.startswith("aux_ctc") for k in joint.model.state_dict())  # not in distribution weights
    assert any(k.startswith("objective.aux_ctc") for k in joint.state_dict())


def test_empty_batch_is_skipped_alone_and_zero_under_ddp(tiny_model_cfg):
    """A batch whose every image failed to decode: skipped on one process; under DDP a zero loss that still
    gives every parameter a (zero) gradient, so the other ranks' all-reduce does not wait forever."""
    module = _module(tiny_model_cfg, aux_ctc_weight=0.5)
    empty = (torch.zeros(0, 3, 32, 96), [], [])
    module._trainer = SimpleNamespace(world_size=1)
    assert module.training_step(empty, 0) is None
    module._trainer = SimpleNamespace(world_size=2)
    loss = module.training_step(empty, 0)
    loss.backward()
    assert loss.item() == 0.0
    params = [p for p in module.parameters() if p.requires_grad]
    assert params and all(p.grad is not None and not p.grad.any() for p in params)


def test_charset_protocol_and_sample_sheet():
    assert charset_protocol("0123456789abcdefghijklmnopqrstuvwxyz") == "36"
    assert charset_protocol("abc") == "94" and charset_protocol("日本") == "raw"
    sheet = sample_sheet(torch.zeros(2, 3, 32, 96), ["ab", "c"], ["ab", "d"])
    assert sheet.dtype.name == "uint8" and sheet.shape[2] == 3 and sheet.shape[0] > 64 and sheet.shape[1] >= 96


# ---- atomic checkpoints --------------------------------------------------------------------------------

def test_atomic_checkpoint_write_never_leaves_a_broken_file(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    with pytest.raises(Exception):
        io.save_checkpoint({"step": 2, "bad": lambda: None}, path)  # fails mid-write (unpicklable)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # normal permissions, not mkstemp's 0600


# ---- end to end --------------------------------------------------------------------------------------------

def test_overrides_parse_yaml_merge_sections_and_index_lists():
    cfg = load_config("synth-only-tiny", ["data.train.0.synthetic.config=naive", "train.lr=1e-3",
                                          "model.img_size=[48,160]", "data.train.0.synthetic={seed: 3}"])
    assert cfg.data.train[0].synthetic.config == "naive" and cfg.data.train[0].synthetic.seed == 3
    assert cfg.data.train[0].synthetic.length == 10_000_000  # a dict value merges, it does not replace
    assert cfg.train.lr == 1e-3 and list(cfg.model.img_size) == [48, 160]
    for bad, message in [("data.train.5.weight=1", "index"), ("train.lr.x=1", "train.lr is a value"),
                         ("nokey", "key=value")]:
        with pytest.raises(ValueError, match=message):
            load_config("synth-only-tiny", [bad])


def test_cli_rejects_unknown_train_keys(tmp_path, capsys, words_dir):
    cfg = tiny_config(tmp_path, words_dir)
    assert cli_main(["train", "--config", str(cfg), "train.learning_rate=1", "--output", str(tmp_path / "r")]) == 2
    assert "learning_rate" in capsys.readouterr().err


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, words_dir):
    """master-tiny trained on 6 rendered words on CPU (in-process `masterocr train`): (run folder, summary)."""
    tmp = tmp_path_factory.mktemp("overfit")
    cfg = tiny_config(tmp, words_dir, max_steps=40)
    out = tmp / "run"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = cli_main(["train", "--config", str(cfg), "--output", str(out), "--quiet"])
    assert code == 0
    return out, summary_of(stdout.getvalue())


def test_overfits_tiny_set_to_full_accuracy(overfit_run, words_dir):
    """100% training-set accuracy proves the loop end to end."""
    out, summary = overfit_run
    assert summary["global_step"] == 40 and summary["best_score"] == 100.0

    # Weights for distribution: read back and decode the training images again.
    model, model_cfg = load_model(out / "weights" / "final.safetensors")
    from masterocr.data.datasets import build_dataset
    from masterocr.data.image import ImageTransform
    from masterocr.decoding import decode

    data = build_dataset(words_dir, ImageTransform(32, 96))
    images = torch.stack([data[i][0] for i in range(len(data))])
    texts = [d.text for d in decode(model, images).decoded(model.tokenizer)]
    assert texts == [data[i][1] for i in range(len(data))]

    # The resolved config is in the run folder and in the checkpoint, which loads weights-only.
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["masterocr_config"]["train"]["max_steps"] == 40
    assert ckpt["masterocr_config"]["model"]["charset"] == "36"
    assert "max_steps: 40" in (out / "config.yaml").read_text()
    assert ckpt["global_step"] == 40
    best_model, _ = load_model(out / "checkpoints" / "best.ckpt")
    assert (out / "csv" / "metrics.csv").read_text().count("\n") > 10
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_finetune_new_charset_with_ema_aux_ctc_and_accumulation(overfit_run, words_dir, tmp_path, capsys):
    """--finetune from the overfit weights into a charset with new characters; EMA, auxiliary CTC and
    gradient accumulation on. The aux head never reaches the exported weights; EMA weights are exported."""
    out, _ = overfit_run
    cfg = tiny_config(tmp_path, words_dir, max_steps=2, accumulate_grad_batches=2, batch_size=3, ema=True,
                      ema_decay=0.5, aux_ctc_weight=0.3, val_every_steps=2)
    run = tmp_path / "ft"
    code = cli_main(["train", "--config", str(cfg), "--output", str(run), "--finetune",
                     str(out / "weights" / "final.safetensors"), "model.charset=abcdefghijklmnopqrstuvwxyz!?",
                     "--quiet"])
    assert code == 0
    summary = summary_of(capsys.readouterr().out)
    assert summary["global_step"] == 2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["masterocr_config"]["train"]["init_weights"].endswith("final.safetensors")
    assert any(k.startswith("objective.aux_ctc.") for k in ckpt["state_dict"])
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 4  # 2 steps x 2 batches
    model, model_cfg = load_model(run / "weights" / "final.safetensors")  # strict load: no aux head inside
    assert model_cfg["charset"] == "abcdefghijklmnopqrstuvwxyz!?"
    ema = ckpt["masterocr_ema_state_dict"]
    assert torch.equal(model.head.bias, ema["head.bias"])
    assert not torch.equal(ema["head.bias"], ckpt["state_dict"]["model.head.bias"])
    # Shared characters start from the source rows: 'a' moved from id 11 (charset 36) to id 1.
    source, _ = load_model(out / "weights" / "final.safetensors")
    init = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # after 2 small steps: close to init
    assert torch.allclose(init["state_dict"]["model.embed.weight"][1], source.embed.weight[11], atol=0.05)


def _final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def test_sigkill_then_resume_continues_exactly(tmp_path, words_dir):
    """Kill a run with SIGKILL after its first checkpoint; --resume reaches the same step count and the very
    same weights as an uninterrupted run (optimizer, schedule, RNG and data position all restored)."""
    steps = 12
    # 6 words in batches of 2: 3 batches per epoch, so the first checkpoint (step 2) is mid-epoch.
    cfg = tiny_config(tmp_path, words_dir, max_steps=steps, checkpoint_every_steps=2, batch_size=2,
                      val_every_steps=6)
    # Augmentation and dropout on: the resumed run must also reproduce the random streams.
    text = json.loads(cfg.read_text())
    text["data"]["augment"] = "light"
    cfg.write_text(json.dumps(text))

    reference = tmp_path / "uninterrupted"
    done = run_cli(["--config", cfg, "--output", reference, "--quiet"], timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "masterocr.cli.main", "train", "--config", str(cfg),
                             "--output", str(killed), "--quiet"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 0 < step_at_kill < steps

    resumed = run_cli(["--resume", last], timeout=300)  # run folder and config come from the checkpoint
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert summary_of(resumed.stdout)["global_step"] == steps

    assert f"resumed at step {step_at_kill} " in resumed.stderr  # continued from the checkpoint, not step 0

    a, b = _final_state(reference), _final_state(killed)
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_ddp_two_processes_on_cpu(tmp_path, words_dir):
    """2-process DDP on CPU (gloo), launched by Lightning from one command, for a few steps."""
    cfg = tiny_config(tmp_path, words_dir, max_steps=3, batch_size=2, checkpoint_every_steps=3,
                      val_every_steps=3)
    out = tmp_path / "ddp"
    done = run_cli(["--config", cfg, "--output", out, "train.devices=2", "train.strategy=ddp", "--quiet"],
                   timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_of(done.stdout)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert summary["best_score"] is not None  # validation ran, metrics reduced over both ranks


def test_shipped_configs_resolve_and_gpu_recipe_holds_out_half_of_iiit5k_train(shared_data, monkeypatch):
    from masterocr.charset import AttentionTokenizer
    from masterocr.config import config_names
    from masterocr.training.data import RecognitionData
    from masterocr.training.runner import resolve_run_config

    for name in config_names():
        resolve_run_config(name)  # unknown keys or a broken base would raise
    monkeypatch.chdir(ROOT)  # the recipes name ../shared/data from the repository root
    cfg = resolve_run_config("bundled-gpu")
    data = RecognitionData(cfg, AttentionTokenizer(cfg.model.charset, 25), (32, 100))
    data.setup("validate")
    held = data.val_sets[0][1]
    trained = data._open_source(dict(cfg.data.train[1]), None, train=True)[1]
    assert data.val_names == ["IIIT5K-train-heldout", "IIIT5K-train-heldout-rot90", "IIIT5K-train-heldout-rot180",
                              "IIIT5K-train-heldout-rot270", "SVT-train"]
    assert len(held) + len(trained) == 2000 and 900 < len(held) < 1100
    assert not {held.name(i) for i in range(len(held))} & {trained.name(i) for i in range(len(trained))}
