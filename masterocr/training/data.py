"""Training data: a mix of LMDB trees, label-file folders and the synthetic renderer, sampled by ratio.

Determinism and resuming. An epoch's sample order is a pure function of (seed, epoch): each source gets
round(epoch_size x its share of the weights) draws, taken from that source's own shuffled cycle, and the
draws are shuffled together. Every drawn sample also carries its own seed, derived from (seed, epoch,
position), and the random modules are seeded with it while that sample is loaded and augmented; so a sample
looks the same whatever the number of workers, and a resumed run sees exactly the batches an uninterrupted
run would have seen. The training loader reports its position (epoch, batches consumed) to Lightning, which
stores it in checkpoints and hands it back on `--resume` (Lightning's `state_dict` protocol for loaders).

Each rank reads every world_size-th draw of the epoch (sharding is done here, not by Lightning), so all ranks
see disjoint samples and the same number of batches. Validation sets are sharded the same way and padded to
equal length; the padding is marked and left out of the metrics, so results are exact on any number of ranks.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.accelerators import CPUAccelerator
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from masterocr.data.augment import build_augment
from masterocr.data.datasets import build_dataset, collate, parse_holdout, split_held_out
from masterocr.data.image import ImageTransform, Rotate

logger = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for one drawn sample (a small integer hash; distinct inputs rarely collide)."""
    h = (seed * 0x9E3779B1 + 0x7F4A7C15) & _MASK32
    h = ((h ^ epoch) * 0x85EBCA77 + 0x165667B1) & _MASK32
    h = ((h ^ (position & _MASK32) ^ (position >> 32)) * 0xC2B2AE3D) & _MASK32
    return h ^ (h >> 16)


@contextmanager
def seeded_randomness(seed: int, restore: bool):
    """Seed `random`, NumPy's global RNG and torch's CPU RNG with `seed` for one sample.

    restore=True puts the previous states back afterwards: needed when loading runs in the training process
    (num_workers=0), where these generators also drive dropout and must follow the same path as in a run
    that loads in workers.
    """
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if restore else None
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def _in_worker() -> bool:
    return torch.utils.data.get_worker_info() is not None


class MixedDataset(Dataset):
    """Several sources behind one index; items are fetched with keys (global index, sample seed) or
    (global index, sample seed, label-length cap): the cap reaches sources that can honour it (the synthetic
    renderer draws a shorter word); real crops are read as they are."""

    def __init__(self, sources: Sequence[Dataset], names: Sequence[str]):
        self.concat = ConcatDataset(list(sources))
        self.names = list(names)
        self.sizes = [len(s) for s in sources]
        self.offsets = [0] + list(self.concat.cumulative_sizes[:-1])

    def __len__(self) -> int:
        return len(self.concat)

    def __getitem__(self, key: tuple[int, ...]):
        index, seed, *cap = key
        with seeded_randomness(seed, restore=not _in_worker()):
            if cap:
                i = bisect.bisect_right(self.concat.cumulative_sizes, index)
                source = self.concat.datasets[i]
                if hasattr(source, "get_capped"):
                    return source.get_capped(index - self.offsets[i], max_length=cap[0])
            return self.concat[index]


class ShortWordsFirst:
    """A label-length cap that grows linearly from `start_length` at batch 0 to `max_length` at batch
    `batches` (a curriculum for attention decoders, which learn to align on short words first); None after."""

    def __init__(self, batches: int, start_length: int, max_length: int):
        if batches < 0 or start_length < 1:
            raise ValueError(f"short_words_first: steps ({batches}) must be >= 0 and start_length "
                             f"({start_length}) >= 1")
        self.batches, self.start, self.max_length = int(batches), int(start_length), int(max_length)

    def __call__(self, batch: int) -> int | None:
        if batch >= self.batches or self.start >= self.max_length:
            return None
        return self.start + (self.max_length - self.start) * batch // self.batches


class _EpochRelay:
    """Lightning calls `set_epoch` on `loader.sampler` and `loader.batch_sampler.sampler`, never on the batch
    sampler itself; this stands in as the batch sampler's `.sampler` and passes the epoch on."""

    def __init__(self, owner: "MixedBatchSampler"):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class MixedBatchSampler(Sampler[list]):
    """Batches of (global index, sample seed) for one rank; the order is a pure function of (seed, epoch).

    weights: one non-negative number per source (its share of the draws). epoch_size: draws per epoch over
    all ranks (default: the total number of samples). Incomplete last batches are dropped. length_cap: batch
    number since the start of training -> label-length cap or None (ShortWordsFirst); a cap is added to the
    keys of that batch.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int,
                 epoch_size: int | None = None, rank: int = 0, world_size: int = 1,
                 length_cap: Callable[[int], int | None] | None = None):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per training source is needed")
        if any(w < 0 for w in weights) or not any(w > 0 and n > 0 for w, n in zip(weights, sizes)):
            raise ValueError(f"source weights {list(weights)} must be >= 0 with one positive for a non-empty source")
        for n, w in zip(sizes, weights):
            if w > 0 and n == 0:
                raise ValueError("a training source with a positive weight holds no samples")
        self.sizes = [int(n) for n in sizes]
        self.offsets = np.cumsum([0] + self.sizes[:-1]).tolist()
        self.weights = [float(w) for w in weights]
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch_size = int(epoch_size) if epoch_size else sum(self.sizes)
        self.length_cap = length_cap
        self.epoch = 0
        self._skip_batches = 0  # batches of the next iteration already consumed (set on resume)
        self.sampler = _EpochRelay(self)
        if len(self) == 0:
            raise ValueError(f"an epoch of {self.epoch_size} samples gives no full batch of {self.batch_size} "
                             f"on each of {self.world_size} ranks; lower train.batch_size or raise data.epoch_size")

    def __len__(self) -> int:
        return (self.epoch_size // self.world_size) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw_counts(self) -> list[int]:
        """Draws per source in one epoch (largest remainders, so they sum to epoch_size exactly)."""
        total = sum(w for w, n in zip(self.weights, self.sizes) if n > 0)
        exact = [self.epoch_size * w / total if n > 0 else 0.0 for w, n in zip(self.weights, self.sizes)]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)[: self.epoch_size - sum(counts)]:
            counts[i] += 1
        return counts

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """All draws of `epoch` (all ranks), as global indices, in order."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        parts = []
        for size, offset, count in zip(self.sizes, self.offsets, self.draw_counts()):
            if count == 0:
                continue
            # Whole shuffled passes over the source, then part of one more: every sample before any repeats.
            passes = [torch.randperm(size, generator=g) for _ in range(-(-count // size))]
            parts.append(torch.cat(passes)[:count] + offset)
        draws = torch.cat(parts)
        return draws[torch.randperm(len(draws), generator=g)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # State is read now, not lazily: Lightning may create the iterator before it calls set_epoch.
        epoch, skip = self.epoch, self._skip_batches
        self._skip_batches = 0
        draws = self.epoch_indices(epoch)
        per_rank = len(self) * self.batch_size
        positions = torch.arange(self.rank, per_rank * self.world_size, self.world_size)  # this rank's draws
        return self._batches(draws, positions, epoch, skip)

    def _batches(self, draws, positions, epoch, skip):
        for b in range(skip, len(self)):
            pos = positions[b * self.batch_size:(b + 1) * self.batch_size].tolist()
            cap = self.length_cap(epoch * len(self) + b) if self.length_cap else None
            extra = () if cap is None else (cap,)
            yield [(int(draws[p]), sample_seed(self.seed, epoch, p), *extra) for p in pos]


class ResumableLoader(DataLoader):
    """A DataLoader whose position (epoch, batches consumed) Lightning saves in checkpoints and restores.

    `position` is a callable returning (epoch, batches the training loop has consumed in it); it reads the
    trainer's counters rather than this iterator's, which runs ahead by the prefetched batches.
    """

    def __init__(self, *args, position: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self._position = position

    def state_dict(self) -> dict[str, int]:
        epoch, batches = self._position()
        if batches >= len(self.batch_sampler):  # saved at the end of an epoch: the next one starts fresh
            epoch, batches = epoch + 1, 0
        return {"epoch": int(epoch), "batches": int(batches), "seed": self.batch_sampler.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if int(state.get("seed", self.batch_sampler.seed)) != self.batch_sampler.seed:
            logger.warning("resuming with train.seed=%s but the checkpoint used %s: the data order changes",
                           self.batch_sampler.seed, state["seed"])
        self.batch_sampler.set_epoch(int(state["epoch"]))
        self.batch_sampler._skip_batches = int(state["batches"])


class ValSet(Dataset):
    """A validation dataset read through keys (index, keep); keep=False marks padding for equal shards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, bool]):
        index, keep = key
        item = self.dataset[index]
        return None if item is None else (*item, keep)


class ShardSampler(Sampler[tuple[int, bool]]):
    """Every world_size-th item for this rank, padded so every rank gets ceil(n / world_size) items."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.length, self.rank, self.world_size = int(length), int(rank), int(world_size)

    def __len__(self) -> int:
        return -(-self.length // self.world_size)

    def __iter__(self):
        for i in range(len(self)):
            index = i * self.world_size + self.rank
            yield (index, True) if index < self.length else (index % self.length, False)


def val_collate(batch: list) -> tuple[torch.Tensor, list[str], list[str], torch.Tensor]:
    """[(image, label, name, keep) or None] -> (images (B, C, H, W), labels, names, keep (B,) bool)."""
    good = [item for item in batch if item is not None]
    images, labels, names = collate([item[:3] for item in good] + [None] * (len(batch) - len(good)))
    return images, labels, names, torch.tensor([bool(item[3]) for item in good], dtype=torch.bool)


def _worker_init(_: int) -> None:
    """One thread per loader worker: the training process owns the cores (oversubscription costs 3-6x)."""
    torch.set_num_threads(1)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)):
        return [value]
    return list(value)


def default_num_workers(accelerator: str, devices_per_node: int) -> int:
    """CPU: loading inline costs a few % of a step on 2 cores, a worker would take a core from the model, so
    0 workers up to 2 cores per process, then a quarter of the cores. GPU: the cores per GPU minus one, up to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = max(1, cores // max(1, devices_per_node))
    if accelerator == "cpu":
        return 0 if per_process <= 2 else min(4, per_process // 4)
    return max(0, min(8, per_process - 1))


class RecognitionData(LightningDataModule):
    """Training mix + validation sets from the `data:` / `train:` config sections.

    data.train: list of sources, each {path: str | [str], weight: float} for LMDB dirs/trees and label-file
    folders, or {synthetic: {length, seed, config, fonts}, weight} for the synthetic renderer.
    data.val: list of {name, path}. A path source may carry holdout: {fraction, seed[, group]}: the same spec on a
    training source and a validation source splits it in two, training on the rest and validating on the
    held-out part (about `fraction` of it, chosen per sample by a seeded hash of its id).
    Other keys: augment (preset name, mapping or none), keep_aspect, epoch_size, num_workers ("auto" or a
    number), remove_whitespace, rotate90 (the share of training crops, real and synthetic, turned by 90, 180
    or 270 degrees; a validation source's `rotate: DEG` turns all of it), tall_turn (> 0: crops at least that
    many times taller than wide are turned 90 degrees in training and validation, as `read --orientation tall`
    does: words turned either way become upright or upside down), short_words_first ({steps,
    start_length}: synthetic labels capped at start_length, growing to the full length over `steps`
    optimizer steps).
    """

    def __init__(self, config: Mapping[str, Any], tokenizer, img_size: Sequence[int], in_channels: int = 3):
        super().__init__()
        self.config = config
        self.data_cfg = dict(config.get("data") or {})
        self.train_cfg = dict(config.get("train") or {})
        self.charset = tokenizer.charset
        self.max_length = tokenizer.max_length
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.grayscale = int(in_channels) == 1
        self.batch_size = int(self.train_cfg.get("batch_size", 64))
        self.val_batch_size = int(self.train_cfg.get("val_batch_size") or self.batch_size)
        self.seed = int(self.train_cfg.get("seed", 0))
        self.train_set: MixedDataset | None = None
        self.train_weights: list[float] = []
        self.val_sets: list[tuple[str, Dataset]] = []

    # ---- building --------------------------------------------------------------------------------------

    def transform(self, train: bool, rotate: int = 0) -> ImageTransform:
        """The training pipeline (augmentation, data.rotate90 of the crops turned), or the validation one;
        rotate: every image turned by these degrees first (a rotated validation set)."""
        if train:
            augment = build_augment(self.data_cfg.get("augment", "parseq"),
                                    rotate90=float(self.data_cfg.get("rotate90") or 0.0))
        else:
            augment = Rotate(rotate) if rotate % 360 else None
        return ImageTransform(*self.img_size, keep_aspect=bool(self.data_cfg.get("keep_aspect", False)),
                              grayscale=self.grayscale, augment=augment,
                              tall_turn=float(self.data_cfg.get("tall_turn") or 0.0))

    def _open_source(self, source: Mapping[str, Any], transform: ImageTransform, train: bool) -> tuple[str, Dataset]:
        unknown = sorted(set(source) - {"path", "weight", "synthetic", "name", "holdout", "rotate"})
        if unknown:
            raise ValueError(f"data source {dict(source)!r}: unknown key(s) {unknown}; use path or synthetic, "
                             "weight (training), name and rotate (validation) and holdout (path sources)")
        if source.get("rotate") is not None:
            if train:
                raise ValueError(f"data source {dict(source)!r}: rotate (0/90/180/270) is for validation sets; "
                                 "training rotates a share of every source with data.rotate90")
            transform = self.transform(train=False, rotate=int(source["rotate"]))
        if "synthetic" in source:
            from masterocr.data.synth import SyntheticDataset  # the renderer is optional until it is used

            syn = dict(source["synthetic"] or {})
            unknown = sorted(set(syn) - {"length", "seed", "config", "fonts"})
            if unknown:
                raise ValueError(f"data source synthetic: unknown key(s) {unknown}; use length, seed, config, fonts")
            dataset = SyntheticDataset(self.charset, transform=transform, length=int(syn.get("length", 100_000)),
                                       seed=int(syn.get("seed", self.seed)), config=syn.get("config"),
                                       fonts=syn.get("fonts"), max_length=self.max_length)
            return "synthetic", dataset
        paths = _as_list(source.get("path"))
        if not paths:
            raise ValueError(f"data source {dict(source)!r} needs `path` (or `synthetic`)")
        dataset = build_dataset(paths, transform, charset=self.charset if train else None,
                                max_length=self.max_length if train else None,
                                remove_whitespace=bool(self.data_cfg.get("remove_whitespace", False)))
        if source.get("holdout") is not None:
            fraction, seed, group = parse_holdout(source["holdout"], where=f"data source {paths}")
            # The same spec on both sides: training keeps the rest, validation only the held-out part.
            dataset = split_held_out(dataset, fraction, seed, group, held_out=not train)
        if len(dataset) == 0:
            raise ValueError(f"data source {paths}: no usable samples ({dataset.report})")
        return ",".join(str(p) for p in paths), dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            sources = self.data_cfg.get("train") or []
            if not sources:
                raise ValueError("data.train is empty: give at least one source ({path: ...} or {synthetic: ...})")
            transform = self.transform(train=True)
            opened, names, weights = [], [], []
            for source in sources:
                source = {"path": source} if isinstance(source, (str, os.PathLike)) else dict(source)
                name, dataset = self._open_source(source, transform, train=True)
                opened.append(dataset)
                names.append(name)
                weights.append(float(source.get("weight", 1.0)))
            self.train_set = MixedDataset(opened, names)
            self.train_weights = weights
            for name, size, w in zip(names, self.train_set.sizes, weights):
                logger.info("train source %s: %d samples, weight %g", name, size, w)
        if stage in (None, "fit", "validate") and not self.val_sets:
            transform = self.transform(train=False)
            for i, source in enumerate(self.data_cfg.get("val") or []):
                source = {"path": source} if isinstance(source, (str, os.PathLike)) else dict(source)
                name, dataset = self._open_source(source, transform, train=False)
                self.val_sets.append((str(source.get("name") or os.path.basename(str(name).rstrip("/")) or f"val{i}"),
                                      dataset))

    @property
    def val_names(self) -> list[str]:
        return [name for name, _ in self.val_sets]

    # ---- loaders ---------------------------------------------------------------------------------------

    def length_cap(self) -> ShortWordsFirst | None:
        """data.short_words_first {steps, start_length} as a per-batch cap; steps count optimizer steps."""
        cfg = self.data_cfg.get("short_words_first")
        if not cfg:
            return None
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - {"steps", "start_length"})
        if unknown:
            raise ValueError(f"data.short_words_first: unknown key(s) {unknown}; use steps, start_length")
        batches = int(cfg.get("steps", 0)) * int(self.train_cfg.get("accumulate_grad_batches", 1))
        return ShortWordsFirst(batches, int(cfg.get("start_length", 3)), self.max_length) if batches else None

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _loader_kwargs(self) -> dict:
        trainer = self.trainer
        accelerator, devices = "cpu", 1
        if trainer is not None:
            accelerator = "cpu" if isinstance(trainer.accelerator, CPUAccelerator) else "gpu"
            devices = trainer.num_devices
        workers = self.data_cfg.get("num_workers", "auto")
        workers = default_num_workers(accelerator, devices) if workers in (None, "auto") else int(workers)
        kwargs: dict[str, Any] = {"num_workers": workers, "pin_memory": accelerator == "gpu",
                                  "worker_init_fn": _worker_init}
        if workers > 0:
            kwargs.update(persistent_workers=True, prefetch_factor=int(self.data_cfg.get("prefetch_factor", 2)))
        return kwargs

    def _train_position(self) -> tuple[int, int]:
        # current.completed counts finished epochs (the index of the running one); batch_progress.processed
        # counts this epoch's batches whose training step ran, the one being saved after included.
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.completed, loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> ResumableLoader:
        assert self.train_set is not None, "setup('fit') first"
        rank, world = self._rank_world()
        sampler = MixedBatchSampler(self.train_set.sizes, self.train_weights, self.batch_size, self.seed,
                                    self.data_cfg.get("epoch_size"), rank, world, self.length_cap())
        # A dedicated generator: creating loader iterators never draws from the global RNG (exact resume).
        return ResumableLoader(self.train_set, batch_sampler=sampler, collate_fn=collate,
                               generator=torch.Generator().manual_seed(self.seed),
                               position=self._train_position, **self._loader_kwargs())

    def val_dataloader(self) -> list[DataLoader]:
        rank, world = self._rank_world()
        kwargs = self._loader_kwargs()
        kwargs.pop("persistent_workers", None)  # validation is short; do not keep its workers alive
        return [DataLoader(ValSet(ds), batch_size=self.val_batch_size, sampler=ShardSampler(len(ds), rank, world),
                           collate_fn=val_collate, generator=torch.Generator().manual_seed(self.seed), **kwargs)
                for _, ds in self.val_sets]
