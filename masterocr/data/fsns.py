"""FSNS (French Street Name Signs) TFRecord shards as a dataset, read without TensorFlow.

Each record is a `tf.train.Example` with the features of the FSNS release (Smith et al. 2016, table 4; read as
tensorflow/models research/attention_ocr/python/datasets/fsns.py reads them):
  image/encoded         PNG of the 150x600 image: up to four 150x150 views of one sign side by side
  image/format          "PNG"
  image/class           character ids padded with the null id to 37 (FSNS's null id is 133)
  image/unpadded_class  the same ids without padding
  image/text            the UTF-8 transcription
  image/width, image/orig_width, image/height
                        600, 150 x the number of real views, 150 (views = 4 x orig_width / width)
Ids index FSNS's charset file (`charset_size=134.txt`, shipped as the charset named "fsns"; see
masterocr.charset.IdCharset): id 0 is the space, several spellings may share an id, `<nul>` is the padding.

The image is kept whole, as the CRNN-Seq2Seq-OCR seed model reads it (one 150x600 image). The label is decoded
from `image/class` (else `image/unpadded_class`) with the null padding stripped, and checked against
`image/text` when it is present (a mismatch is counted and logged; the ids win, as they are what FSNS models
train on). A shard is scanned once when opened, for labels and record offsets; images are read by offset
later, in whichever process asks.

Bad input never stops a shard: a record with a missing feature, an image that is not one, an id outside the
charset or a failed data CRC is skipped and counted with a message naming the shard and record index (0 is a
shard's first record); a truncated shard, or one whose framing breaks, is reported with the record where it
stops, and every record before it is kept.
"""

from __future__ import annotations

import array
import glob
import io
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from PIL import Image

from ..charset import IdCharset, read_id_charset
from .datasets import TextImageDataset
from .image import ImageError
from .tfrecord import Example, is_tfrecord, iter_records, make_example, read_record_at, write_tfrecord

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 37          # image/class is padded to this many ids
IMAGE_SHAPE = (150, 600)          # height, width of a record's image
NUM_VIEWS = 4
CHARSET_FILE_PATTERN = "charset_size=*.txt"   # how FSNS (and attention_ocr datasets) name their charset file
_MAX_LOGGED = 50


def find_charset_file(shard: str | os.PathLike) -> str | None:
    """The dataset's own charset file, as FSNS lays it out: `charset_size=N.txt` in the shard's folder or the
    folder above (the download has train/, test/, validation/ beside it). None when there is not exactly one."""
    folder = os.path.dirname(os.path.abspath(os.fspath(shard)))
    for where in (folder, os.path.dirname(folder)):
        found = sorted(glob.glob(os.path.join(glob.escape(where), CHARSET_FILE_PATTERN)))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            return None
    return None


def _ints(feature) -> list[int] | None:
    return list(feature.int64_list.value) if feature.WhichOneof("kind") == "int64_list" else None


def _first_bytes(feature) -> bytes | None:
    if feature.WhichOneof("kind") != "bytes_list" or not feature.bytes_list.value:
        return None
    return feature.bytes_list.value[0]


def strip_null(ids: Sequence[int], null_id: int | None) -> list[int]:
    """The ids before the null padding; ValueError when a real id follows a null (a broken padding)."""
    ids = [int(i) for i in ids]
    if null_id is None or null_id not in ids:
        return ids
    first = ids.index(null_id)
    if any(i != null_id for i in ids[first:]):
        raise ValueError(f"id {next(i for i in ids[first:] if i != null_id)} after the null padding "
                         f"(null id {null_id}) at position {first}")
    return ids[:first]


class FsnsRecordError(ValueError):
    """Why one record cannot be used: `reason` is the short name it is counted under."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class FsnsRecord:
    label: str                 # decoded from the class ids, null padding stripped
    ids: list[int]
    image: bytes               # image/encoded
    text: str | None           # image/text, when present
    views: int | None          # 4 x orig_width / width, when both are present


def decode_record(data: bytes, charset: IdCharset) -> FsnsRecord:
    """A serialized FSNS Example -> FsnsRecord. Raises FsnsRecordError (reason: "not an Example",
    "missing feature", "bad class ids", "id outside charset")."""
    example = Example()
    try:
        example.ParseFromString(data)
    except Exception as e:  # protobuf's DecodeError (its class differs between the C and Python backends)
        raise FsnsRecordError("not an Example", f"not a tf.train.Example ({e})") from None
    features = example.features.feature
    image = _first_bytes(features["image/encoded"]) if "image/encoded" in features else None
    if not image:
        raise FsnsRecordError("missing feature", "no image/encoded")
    padded = _ints(features["image/class"]) if "image/class" in features else None
    unpadded = _ints(features["image/unpadded_class"]) if "image/unpadded_class" in features else None
    if padded is None and unpadded is None:
        raise FsnsRecordError("missing feature", "no image/class nor image/unpadded_class")
    try:
        ids = strip_null(padded if padded is not None else unpadded, charset.null_id)
    except ValueError as e:
        raise FsnsRecordError("bad class ids", f"image/class: {e}") from None
    if padded is not None and unpadded is not None and ids != unpadded:
        raise FsnsRecordError("bad class ids", f"image/class {ids} (null stripped) differs from "
                                               f"image/unpadded_class {unpadded}")
    outside = [i for i in ids if i not in charset.id_to_char]
    if outside:
        raise FsnsRecordError("id outside charset", f"class id {outside[0]} is not in {charset.path}")
    raw_text = _first_bytes(features["image/text"]) if "image/text" in features else None
    views = None
    if "image/width" in features and "image/orig_width" in features:
        width, orig = _ints(features["image/width"]), _ints(features["image/orig_width"])
        if width and orig and width[0] > 0:
            views = round(NUM_VIEWS * orig[0] / width[0])
    return FsnsRecord(charset.decode(ids), ids, image,
                      raw_text.decode("utf-8", errors="replace") if raw_text else None, views)


def text_matches(text: str, ids: Sequence[int], charset: IdCharset) -> bool:
    """Whether image/text spells the same ids (so ' and ’, which share an id, agree)."""
    try:
        return charset.encode(text) == list(ids)
    except ValueError:
        return False


# ---- the dataset ---------------------------------------------------------------------------------------

def _check_image(image: bytes) -> str | None:
    """Why the bytes are not an image, from the header only (cheap); None when they look fine."""
    try:
        with Image.open(io.BytesIO(image)) as img:
            img.size  # noqa: B018 - reading the header is the check
    except Exception as e:
        return f"image/encoded is not an image ({type(e).__name__}: {e})"
    return None


class FsnsDataset(TextImageDataset):
    """One or more FSNS TFRecord shards read as one dataset (see the module docstring).

    charset: an IdCharset, a charset file in FSNS's format, or a shipped name; None uses the dataset's own
    `charset_size=N.txt` when one sits beside the shards (or one folder up), else the shipped "fsns".
    source: the name the dataset is reported under (default: the shard, or the shards' folder).
    Samples are named "<shard>:<record index>"; their held-out id is "<shard file name>:<record index>".
    """

    def __init__(self, shards: str | os.PathLike | Sequence[str | os.PathLike], transform: Callable | None = None,
                 label_filter=None, charset: IdCharset | str | os.PathLike | None = None,
                 source: str | None = None):
        if isinstance(shards, (str, os.PathLike)):
            shards = [shards]
        self.shards = [os.fspath(s) for s in shards]
        if not self.shards:
            raise ValueError("no TFRecord shards given")
        for shard in self.shards:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"{shard}: no such TFRecord shard")
        if source is None:
            folders = {os.path.dirname(s) for s in self.shards}
            source = self.shards[0] if len(self.shards) == 1 else (folders.pop() if len(folders) == 1 else
                                                                    self.shards[0] + ", ...")
        super().__init__(source, transform, label_filter)
        if charset is None:
            own = find_charset_file(self.shards[0])
            charset = own if own is not None else "fsns"
        self.charset = charset if isinstance(charset, IdCharset) else read_id_charset(charset)
        self.format = "FSNS TFRecord"
        # Per kept sample: shard number, byte offset and length of its record, record index in the shard.
        self._shard_of = array.array("H")
        self._offset = array.array("q")
        self._length = array.array("q")
        self._record = array.array("q")
        self.views: Counter = Counter()            # number of views -> records (when width/orig_width are given)
        self.text_mismatches: list[str] = []       # "<shard>:<i>: ids say ..., image/text says ..."
        self.shard_problems: list[str] = []        # truncated shards and broken framing, one line each
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        for number, shard in enumerate(self.shards):
            self._scan(number, shard)
        if self.text_mismatches:
            logger.warning("%s: %d record(s) whose image/text differs from their class ids (labels are taken "
                           "from the ids), e.g. %s", self.source, len(self.text_mismatches), self.text_mismatches[0])
        self._log_report()

    def _skip(self, where: str, reason: str, message: str, log: str = "record skipped, ") -> None:
        self.report.total += 1
        self.report.drop(reason, f"{where}: {message}")
        if self.report.num_dropped <= _MAX_LOGGED:
            logger.warning("%s: %s%s", where, log, message)

    def _scan(self, number: int, shard: str) -> None:
        charset = self.charset
        for read in iter_records(shard):
            where = f"{shard}:{read.index}"
            if read.fatal:  # the rest of the shard is lost: one entry, counted as a damaged shard
                message = f"stops at record {read.index}: {read.problem}; the {read.index} record(s) before it are read"
                self.shard_problems.append(f"{shard}: {message}")
                self._skip(shard, "damaged shard", message, log="")
                return
            if read.data is None:
                self._skip(where, "bad record", read.problem)
                continue
            try:
                record = decode_record(read.data, charset)
            except FsnsRecordError as e:
                self._skip(where, e.reason, str(e))
                continue
            problem = _check_image(record.image)
            if problem is not None:
                self._skip(where, "bad image", problem)
                continue
            if record.text is not None and record.text != record.label \
                    and not text_matches(record.text, record.ids, charset):
                self.text_mismatches.append(f"{where}: ids say {record.label!r}, image/text says {record.text!r}")
            if record.views is not None:
                self.views[record.views] += 1
            kept_before = self.report.kept
            self._add(len(self._offset), record.label, shard, read.index)
            if self.report.kept > kept_before:
                self._shard_of.append(number)
                self._offset.append(read.offset)
                self._length.append(read.length)
                self._record.append(read.index)

    # file access: one descriptor per shard and process (DataLoader workers reopen after the fork) -------
    def _fd(self, number: int) -> int:
        if self._pid != os.getpid():
            self._fds, self._pid = {}, os.getpid()  # inherited descriptors share the parent's; open our own
        fd = self._fds.get(number)
        if fd is None:
            fd = self._fds[number] = os.open(self.shards[number], os.O_RDONLY)
        return fd

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __del__(self):
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    # TextImageDataset ------------------------------------------------------------------------------------
    def _read_bytes(self, key: int) -> bytes:
        name = self._name(key)
        try:
            data = read_record_at(self._fd(self._shard_of[key]), self._offset[key], self._length[key])
            return decode_record(data, self.charset).image
        except (OSError, FsnsRecordError) as e:
            raise ImageError(f"{name}: cannot read the record ({e})") from None

    def _name(self, key: int) -> str:
        return f"{self.shards[self._shard_of[key]]}:{self._record[key]}"

    def _sample_id(self, key: int) -> str:
        return f"{os.path.basename(self.shards[self._shard_of[key]])}:{self._record[key]}"


# ---- finding shards --------------------------------------------------------------------------------------

def shards_in(folder: str | os.PathLike) -> list[str]:
    """The TFRecord files directly inside `folder`, sorted (other files, e.g. the charset, are ignored)."""
    folder = os.fspath(folder)
    names = sorted(os.listdir(folder))
    return [os.path.join(folder, n) for n in names
            if os.path.isfile(os.path.join(folder, n)) and is_tfrecord(os.path.join(folder, n))]


# ---- writing FSNS-format records (tests, and converting other data to this format) -------------------------

def fsns_example(image: bytes, text: str, charset: IdCharset | str = "fsns",
                 max_length: int = MAX_SEQUENCE_LENGTH, views: int = NUM_VIEWS, image_format: str = "PNG",
                 size: tuple[int, int] | None = None) -> bytes:
    """A serialized Example with FSNS's features for an encoded image and its text.

    size: (width, height) of the image (default: read from its header). ValueError for a character outside
    the charset or a text longer than max_length."""
    charset = charset if isinstance(charset, IdCharset) else read_id_charset(charset)
    ids = charset.encode(text)
    if len(ids) > max_length:
        raise ValueError(f"{text!r}: {len(ids)} characters, more than max_length={max_length}")
    if charset.null_id is None:
        raise ValueError(f"{charset.path} has no null id to pad image/class with")
    if size is None:
        with Image.open(io.BytesIO(image)) as img:
            size = img.size
    width, height = size
    features = {
        "image/encoded": image,
        "image/format": image_format,
        "image/class": ids + [charset.null_id] * (max_length - len(ids)),
        "image/unpadded_class": ids,
        "image/text": text,
        "image/height": height,
        "image/width": width,
        "image/orig_width": width * views // NUM_VIEWS,
    }
    if not ids:
        del features["image/unpadded_class"]  # an empty list has no kind to write it with
    return make_example(features)


def write_fsns_shard(path: str | os.PathLike, samples: Iterable[tuple[bytes, str]],
                     charset: IdCharset | str = "fsns", overwrite: bool = False, **kwargs) -> int:
    """Write (encoded image, text) pairs as one FSNS-format TFRecord shard; returns the number written."""
    return write_tfrecord(path, (fsns_example(image, text, charset, **kwargs) for image, text in samples),
                          overwrite=overwrite)
