"""Request bodies -> named image bytes, with the limits enforced while the body streams in.

Multipart bodies are parsed by python-multipart's streaming parser straight into memory (the body size is
capped, so nothing is ever spooled to disk); JSON bodies are validated by pydantic and their base64 decoded
here. Nothing here touches the file system: a file name in a request is only echoed back.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import AsyncIterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import Request

ACCEPTED_TYPES = ("multipart/form-data", "application/json")
MAX_NAME_LENGTH = 255


class RequestError(Exception):
    """A request the server refuses as a whole: its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    name: str
    data: bytes


class ImageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="echoed back in the result (default image_<index>)")
    data: str = Field(..., description="the image file's bytes in base64 (a data: URL also works)")


class ReadRequest(BaseModel):
    """The JSON form of POST /v1/read."""

    model_config = ConfigDict(extra="forbid")
    images: list[ImageIn]


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


async def limited_body(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; 413 as soon as the declared or received size passes max_bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestError(400, f"Content-Length {declared!r} is not a number") from None
        if size > max_bytes:
            raise RequestError(413, f"request body of {size} bytes ({_mb(size)}) is over the limit of "
                                    f"{max_bytes} bytes ({_mb(max_bytes)})")
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > max_bytes:
            raise RequestError(413, f"request body is over the limit of {max_bytes} bytes ({_mb(max_bytes)})")
        if chunk:
            yield chunk


def _too_many(count: int, max_files: int) -> RequestError:
    return RequestError(413, f"too many images in one request: {count} (limit {max_files})")


def _clean_name(name: str) -> str:
    return name[:MAX_NAME_LENGTH]


async def parse_multipart(request: Request, max_bytes: int, max_files: int) -> list[Upload]:
    """multipart/form-data: every file part is one image (any field name, e.g. curl -F files=@a.png)."""
    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise RequestError(422, "multipart/form-data body without a boundary parameter in its Content-Type")
    uploads: list[Upload] = []
    part: dict = {}
    field, value = bytearray(), bytearray()

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])

    def on_header_end() -> None:
        part["headers"][bytes(field).lower()] = bytes(value)
        field.clear()
        value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        field_name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in disposition:
            raise RequestError(422, f"form field {field_name!r} is not a file: send each image as a file "
                                    "part (curl -F files=@word.png)")
        if len(uploads) + 1 > max_files:
            raise _too_many(len(uploads) + 1, max_files)
        part["name"] = disposition[b"filename"].decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part["data"].extend(data[start:end])

    def on_part_end() -> None:
        name = part.get("name") or f"image_{len(uploads)}"
        uploads.append(Upload(_clean_name(name), bytes(part["data"])))

    callbacks = dict(on_part_begin=on_part_begin, on_header_field=on_header_field,
                     on_header_value=on_header_value, on_header_end=on_header_end,
                     on_headers_finished=on_headers_finished, on_part_data=on_part_data, on_part_end=on_part_end)
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        async for chunk in limited_body(request, max_bytes):
            parser.write(chunk)
    except FormParserError as e:
        raise RequestError(422, f"malformed multipart/form-data body: {e}") from None
    if parser.state != MultipartState.END:
        raise RequestError(422, "malformed multipart/form-data body: it ends before the closing boundary")
    return uploads


def _decode_base64(text: str, label: str) -> bytes:
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise RequestError(422, f"{label}: a data: URL must be base64 (data:<type>;base64,<data>)")
    try:
        return base64.b64decode("".join(text.split()), validate=True)  # line breaks (base64 -w 76) allowed
    except (binascii.Error, ValueError) as e:
        raise RequestError(422, f"{label}: data is not valid base64 ({e})") from None


async def parse_json(request: Request, max_bytes: int, max_files: int) -> list[Upload]:
    """application/json: {"images": [{"name": "a.png", "data": "<base64>"}, ...]}."""
    body = bytearray()
    async for chunk in limited_body(request, max_bytes):
        body.extend(chunk)
    try:
        parsed = ReadRequest.model_validate_json(bytes(body))
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise RequestError(422, f"malformed JSON body: {problems}") from None
    if len(parsed.images) > max_files:
        raise _too_many(len(parsed.images), max_files)
    uploads = []
    for i, image in enumerate(parsed.images):
        name = _clean_name(image.name) if image.name else f"image_{i}"
        uploads.append(Upload(name, _decode_base64(image.data, f"images[{i}] ({name})")))
    return uploads


async def parse_uploads(request: Request, max_bytes: int, max_files: int) -> list[Upload]:
    """The images of a POST /v1/read request, by its Content-Type (415 for any other type)."""
    media_type = parse_options_header(request.headers.get("content-type", ""))[0].decode("latin-1")
    if media_type == "multipart/form-data":
        uploads = await parse_multipart(request, max_bytes, max_files)
    elif media_type == "application/json":
        uploads = await parse_json(request, max_bytes, max_files)
    else:
        raise RequestError(415, f"Content-Type {media_type or '(none)'!r} is not accepted: send "
                                f"{' or '.join(ACCEPTED_TYPES)}")
    if not uploads:
        raise RequestError(422, "the request holds no images")
    return uploads
