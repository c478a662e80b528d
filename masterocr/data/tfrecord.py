"""TFRecord files and `tf.train.Example` messages, read and written without TensorFlow.

A TFRecord file is a sequence of records, each framed as
    uint64 length | uint32 masked CRC-32C of the 8 length bytes | data[length] | uint32 masked CRC-32C of data
(little-endian; masked = ((crc >> 15) | (crc << 17)) + 0xa282ead8, modulo 2**32). CRC-32C comes from
google-crc32c (Google's maintained C implementation); the Example message is parsed by the protobuf package
from a schema declared here with the field numbers of TensorFlow's example.proto / feature.proto, so no
generated code and no TensorFlow are needed.

Damage is reported, never raised from the middle of a file: `iter_records` yields every readable record, a
record whose data fails its CRC is yielded with `problem` set and reading goes on (its length was checked by
its own CRC), and a truncated file or a length that fails its CRC ends the file with a last item that says so.
"""

from __future__ import annotations

import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Iterable, Iterator

import functools

import google_crc32c

_HEADER = struct.Struct("<QI")   # length, masked CRC of the length
_FOOTER = struct.Struct("<I")    # masked CRC of the data
_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes | memoryview) -> int:
    """TFRecord's masked CRC-32C (the mask keeps CRCs of data that itself holds CRCs well spread)."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ---- tf.train.Example ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _example_classes() -> dict:
    """Message classes for tensorflow.Example and its parts, built from a schema declared in code (on first
    use, so opening other datasets never imports protobuf)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="masterocr/tf_example.proto", package="tensorflow",
                                              syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]):
        msg = file.message_type.add(name=name)
        for field_name, number, label, kind, type_name in fields:
            field = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                field.type_name = type_name
        return msg

    repeated, optional = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, repeated, F.TYPE_BYTES, ""))
    message("FloatList", ("value", 1, repeated, F.TYPE_FLOAT, ""))   # proto3 packs repeated scalars
    message("Int64List", ("value", 1, repeated, F.TYPE_INT64, ""))
    feature = message("Feature", ("bytes_list", 1, optional, F.TYPE_MESSAGE, ".tensorflow.BytesList"),
                      ("float_list", 2, optional, F.TYPE_MESSAGE, ".tensorflow.FloatList"),
                      ("int64_list", 3, optional, F.TYPE_MESSAGE, ".tensorflow.Int64List"))
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    # map<string, Feature> feature = 1, spelled as protobuf stores a map: a repeated nested entry message.
    features = message("Features", ("feature", 1, repeated, F.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=optional, type=F.TYPE_STRING)
    entry.field.add(name="value", number=2, label=optional, type=F.TYPE_MESSAGE, type_name=".tensorflow.Feature")
    entry.options.map_entry = True
    message("Example", ("features", 1, optional, F.TYPE_MESSAGE, ".tensorflow.Features"))

    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")}


def Example(*args, **kwargs):  # noqa: N802 - stands for the message class
    """A new tensorflow.Example message (the class is built on first use)."""
    return _example_classes()["Example"](*args, **kwargs)


def make_example(features: dict[str, bytes | str | int | float | Iterable]) -> bytes:
    """A serialized Example from {name: value or list of values}: bytes/str -> bytes_list, int -> int64_list,
    float -> float_list (the kind is taken from the first value; an empty list needs a typed value)."""
    example = Example()
    for name, values in features.items():
        if isinstance(values, (bytes, str, int, float)):
            values = [values]
        values = list(values)
        if not values:
            raise ValueError(f"feature {name!r}: empty list, its kind is unknown")
        first = values[0]
        feature = example.features.feature[name]
        if isinstance(first, (bytes, str)):
            feature.bytes_list.value.extend(v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values)
        elif isinstance(first, bool) or not isinstance(first, (int, float)):
            raise TypeError(f"feature {name!r}: unsupported value {first!r}")
        elif isinstance(first, int):
            feature.int64_list.value.extend(int(v) for v in values)
        else:
            feature.float_list.value.extend(float(v) for v in values)
    return example.SerializeToString()


# ---- reading -------------------------------------------------------------------------------------------

@dataclass
class RecordRead:
    """One step through a TFRecord file: a record (data), a damaged record (problem, reading goes on) or the
    end of what could be read (problem, fatal=True)."""

    index: int                 # position of the record in the file, 0 for the first
    offset: int                # byte offset of its data (of its header when fatal)
    length: int
    data: bytes | None = None
    problem: str | None = None
    fatal: bool = False


def is_tfrecord(path: str | os.PathLike) -> bool:
    """Whether `path` is a file that starts with a TFRecord header (its length CRC checks out)."""
    try:
        with open(path, "rb") as f:
            header = f.read(_HEADER.size)
    except OSError:
        return False
    if len(header) < _HEADER.size:
        return False
    length_bytes = header[:8]
    return masked_crc32c(length_bytes) == _HEADER.unpack(header)[1]


def iter_records(path: str | os.PathLike, verify: bool = True) -> Iterator[RecordRead]:
    """Every record of a TFRecord file in order, with damage reported in the items (see RecordRead)."""
    size = os.path.getsize(path)
    with open(path, "rb", buffering=1 << 20) as f:
        index, position = 0, 0
        while position < size:
            header = f.read(_HEADER.size)
            if len(header) < _HEADER.size:
                yield RecordRead(index, position, 0, problem=f"truncated: {len(header)} of the {_HEADER.size} "
                                 f"header bytes at byte {position}", fatal=True)
                return
            length, length_crc = _HEADER.unpack(header)
            if verify and masked_crc32c(header[:8]) != length_crc:
                yield RecordRead(index, position, length, problem=f"length CRC mismatch at byte {position} "
                                 "(the rest of the file cannot be framed)", fatal=True)
                return
            data_offset = position + _HEADER.size
            end = data_offset + length + _FOOTER.size
            if end > size:
                yield RecordRead(index, position, length, problem=f"truncated: the record at byte {position} "
                                 f"needs {length + _FOOTER.size} bytes after its header, the file has "
                                 f"{size - data_offset}", fatal=True)
                return
            data = f.read(length)
            (data_crc,) = _FOOTER.unpack(f.read(_FOOTER.size))
            if verify and masked_crc32c(data) != data_crc:
                yield RecordRead(index, data_offset, length, problem="data CRC mismatch (record skipped)")
            else:
                yield RecordRead(index, data_offset, length, data=data)
            index, position = index + 1, end


def read_record_at(fd: int, offset: int, length: int) -> bytes:
    """The data of one record whose offset and length a scan found (positional read: safe across threads)."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read: {len(data)} of {length} bytes at byte {offset}")
    return data


# ---- writing -------------------------------------------------------------------------------------------

def frame_record(data: bytes) -> bytes:
    """One record as it is stored: header, data, footer."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + _FOOTER.pack(masked_crc32c(data))


def write_tfrecord(path: str | os.PathLike, records: Iterable[bytes], overwrite: bool = False) -> int:
    """Write serialized records to a TFRecord file (through a temporary file renamed into place); returns
    the number written."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists (remove it or pass overwrite)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=os.path.dirname(path))
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for data in records:
                f.write(frame_record(bytes(data)))
                count += 1
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return count


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
