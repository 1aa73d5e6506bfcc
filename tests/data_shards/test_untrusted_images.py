"""Image files are untrusted input: only JPEG, PNG and WebP are opened (the converters also read
BMP, TIFF, PPM and GIF source folders), whatever format the bytes claim; an image whose header
claims more than images.MAX_PIXELS is refused before a pixel is decoded; both are bad samples
with a reason, counted like any corrupt image. 16-bit grey decodes exactly, without float copies."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, UnidentifiedImageError

from data_shards import images
from data_shards.images import SOURCE_FORMATS, open_header, open_image, open_photo, to_rgb8
from data_shards.problems import PROBLEM_KINDS, ProblemLog
from data_shards.reader import eval_batches, train_loader
from data_shards.writer import write_shards
from fake_datasets import write_set

SIZE = 16
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def mask() -> bytes:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[: SIZE // 2] = 255
    return encode(m)


def good(key: str) -> dict:
    return {"__key__": key, "image.png": encode(np.full((SIZE, SIZE, 3), 100, np.uint8)), "mask.png": mask()}


@pytest.fixture
def ghostscript_calls(monkeypatch) -> list:
    """Records every hand-over to Ghostscript (installed or not, it must never be reached)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", refuse)
    return calls


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zero_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed row block by row block (never held whole)."""
    z = zlib.compressobj(9)
    block = b"\0" * ((width + 1) * 256)  # 256 rows: a filter byte and the row's zeros each
    parts = [z.compress(block) for _ in range(height // 256)]
    parts += [z.compress(b"\0" * ((width + 1) * (height % 256))), z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts))
            + png_chunk(b"IEND", b""))


def test_eps_named_jpg_is_a_bad_sample_and_never_reaches_ghostscript(tmp_path, ghostscript_calls, caplog):
    assert Image.open(io.BytesIO(EPS)).format == "EPS"  # what PIL alone would make of these bytes
    url = write_set(tmp_path / "eps", [[good("a"), {"__key__": "eps", "image.jpg": EPS, "mask.png": mask()},
                                        good("b")]])
    problems = ProblemLog()
    with caplog.at_level("WARNING", logger="data_shards"):
        (images_, _), = list(eval_batches(url, 8, problems=problems))
    assert images_.shape[0] == 2
    assert problems.total == {**dict.fromkeys(PROBLEM_KINDS, 0), "undecodable_image": 1}
    assert "sample eps" in caplog.text and "not a JPEG, PNG or WebP file (it starts with b'%!PS" in caplog.text

    batch = next(iter(train_loader(url, 2, num_workers=0, seed=0, hflip=False)))
    assert set(batch.keys) == {"a", "b"} and batch.problems[PROBLEM_KINDS.index("undecodable_image")] >= 1
    assert ghostscript_calls == []


@pytest.mark.parametrize("opener", [
    pytest.param(open_image, id="reader"),
    pytest.param(lambda data: open_image(data, SOURCE_FORMATS), id="converters"),
    pytest.param(open_photo, id="segment_images"),
    pytest.param(lambda data: open_photo(data, at_least=32), id="segment_images-draft"),
])
def test_every_opener_refuses_postscript(opener, ghostscript_calls):
    with pytest.raises(UnidentifiedImageError, match="not a JPEG, PNG"):
        opener(EPS)
    assert ghostscript_calls == []


def test_the_writer_refuses_postscript_as_image_bytes(tmp_path, ghostscript_calls):
    sample = {"key": "x", "image_bytes": EPS, "image_ext": "jpg"}
    with pytest.raises(ValueError, match=r"sample x: image_bytes are not an image this set can hold "
                                         r"\(not a JPEG, PNG or WebP"):
        write_shards([sample], str(tmp_path / "set"), progress=False)
    assert ghostscript_calls == []


def test_a_png_bomb_is_a_bad_sample_not_a_crash(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(images, "MAX_PIXELS", 1_000_000)  # 1 MP here, 100 MP by default
    bomb = zero_png(2000, 2000)  # 4 MP of zeros in a few KB
    assert len(bomb) < 20_000
    url = write_set(tmp_path / "bomb", [[good("a"), {"__key__": "bomb", "image.png": bomb, "mask.png": mask()},
                                         good("b")]])
    problems = ProblemLog()
    with caplog.at_level("WARNING", logger="data_shards"):
        (images_, masks), = list(eval_batches(url, 8, problems=problems))
    assert images_.shape[0] == masks.shape[0] == 2
    assert problems.total == {**dict.fromkeys(PROBLEM_KINDS, 0), "undecodable_image": 1}
    assert "sample bomb" in caplog.text and "2000x2000 pixels (4 MP) is more than the 1 MP" in caplog.text

    batch = next(iter(train_loader(url, 2, num_workers=0, seed=0, hflip=False)))
    assert set(batch.keys) == {"a", "b"}


def test_a_178_megapixel_png_of_200_kb_is_refused_from_its_header(recwarn):
    bomb = zero_png(13350, 13350)  # 178.2 MP: under twice PIL's own limit, where PIL only warns
    assert len(bomb) < 250_000
    for opener in (open_image, open_photo, lambda data: open_image(data, SOURCE_FORMATS)):
        with pytest.raises(Image.DecompressionBombError, match=r"13350x13350 pixels \(178 MP\).*MAX_PIXELS"):
            opener(bomb)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert open_header(zero_png(9000, 9000)).size == (9000, 9000)  # 81 MP: a big photo, still opened


def test_a_16bit_png_decodes_exactly_without_a_float64_copy():
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    img = open_image(encode(every))
    assert img.mode == "I;16"
    want = np.clip(every.astype(np.float64) / 257 + 0.5, 0, 255).astype(np.uint8)  # value / 257, rounded
    got = np.asarray(to_rgb8(img))
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    assert got[0, 0, 0] == 0 and got[-1, -1, 0] == 255 and got[128, 128, 0] == 128  # 32896 = 128 * 257

    big = open_image(encode(np.full((1024, 1024), 40000, np.uint16)))  # 1 MP: a float64 copy is 8 MB
    tracemalloc.start()
    try:
        rgb = to_rgb8(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.asarray(rgb)[0, 0].tolist() == [156, 156, 156]  # 40000 / 257 = 155.6
    assert peak < 8 * 1024 * 1024, f"{peak / 2 ** 20:.1f} MiB traced while converting a 1 MP 16-bit image"
