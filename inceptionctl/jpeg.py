"""JPEG bytes: the header's size, decoding at a reduced scale, and batched decoding on a device.

* :func:`jpeg_header` reads the frame header (height, width, colour components) without
  decoding, so a training crop can be drawn before the pixels exist.
* :func:`decode_scaled` decodes at 1/2, 1/4 or 1/8 of the size with libjpeg's DCT scaling
  (PIL's ``draft``): much less work when the crop, scaled down, still covers the output size.
* :func:`decode_on_device` decodes a batch with ``torchvision.io.decode_jpeg(list, device=...)``
  (nvJPEG on CUDA), image by image where the batch call fails, so one bad file spoils nothing.

Decoders raise ValueError (one line) for what cannot be decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision import io as tvio

from .errors import one_line

# start-of-frame markers: baseline, extended, progressive, lossless (not DHT C4, JPG C8, DAC CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
SCALES = (8, 4, 2)  # the reductions libjpeg decodes directly

# torchvision 0.29 announces that torchvision.io's image decoders will move to TorchCodec; they
# are the decoders this project is built on until then, so the notice is not the user's concern.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                                          "TorchVision", category=DeprecationWarning)


@dataclass(frozen=True)
class JpegHeader:
    height: int
    width: int
    components: int  # 1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK
    progressive: bool


def read_bytes(path: str | os.PathLike) -> bytearray:
    """A file's bytes (writable, so ``torch.frombuffer`` shares them without a copy). Only a
    regular file: a FIFO would block the read, a device would never end it."""
    import stat

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise ValueError("not a regular file")
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        data = bytearray(size)
        got = fh.readinto(data)
    if got != size:  # the file changed while read
        del data[got:]
    return data


def jpeg_header(data: bytes | bytearray) -> JpegHeader | None:
    """The frame header of JPEG ``data``; None for anything else (or a header it cannot find)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before it
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in _SOF:
            if i + 10 > n or length < 8:
                return None
            height = (data[i + 5] << 8) | data[i + 6]
            width = (data[i + 7] << 8) | data[i + 8]
            if height == 0 or width == 0:  # height given later (DNL): decode to learn it
                return None
            return JpegHeader(height, width, data[i + 9], marker in (0xC2, 0xC6, 0xCA, 0xCE))
        i += 2 + length
    return None


#: The most pixels an image may have: PIL's decompression-bomb limit (2 x MAX_IMAGE_PIXELS). A
#: few hundred bytes of PNG or JPEG can declare 100000 x 100000 pixels.
MAX_PIXELS = 2 * 89_478_485


def declared_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """(width, height) from a PNG's or JPEG's header, without decoding; None for others."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    header = jpeg_header(data)
    return None if header is None else (header.width, header.height)


def decode_full(data: bytearray) -> Tensor:
    """Decode JPEG/PNG/... bytes to uint8 ``[3, H, W]`` RGB (PIL where torchvision cannot).

    16-bit images (PNG, TIFF) are scaled to 8 bits, as an 8-bit copy of the same picture would
    read; an image whose header declares more than :data:`MAX_PIXELS` is refused undecoded.
    """
    if not data:
        raise ValueError("empty file")
    size = declared_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ValueError(f"image too large: {size[0]}x{size[1]} pixels, over the limit of "
                         f"{MAX_PIXELS:,}")
    try:
        img = tvio.decode_image(torch.frombuffer(data, dtype=torch.uint8),
                                mode=tvio.ImageReadMode.RGB)
    except RuntimeError as exc:
        # Modes libjpeg/libpng decode but cannot convert (e.g. some CMYK JPEGs): PIL can.
        img = _decode_with_pil(data, exc)
    if img.dtype == torch.uint16:  # libpng keeps 16-bit samples: 0..65535
        img = to_uint8(img)
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
        raise ValueError(f"decoded to an unexpected shape {tuple(img.shape)}")
    return img


def to_uint8(img: Tensor) -> Tensor:
    """16-bit samples scaled to 8 bits (``x * 255 / 65535``, rounded), as torchvision scales."""
    from torchvision.transforms.v2 import functional as TF

    return TF.to_dtype(img, torch.uint8, scale=True)


def _decode_with_pil(data: bytearray, first: Exception) -> Tensor:
    """PIL's decoding, for what torchvision's cannot. The reason given when PIL fails too is
    PIL's once it knew the format (a truncated BMP), else torchvision's (not an image). Images
    up to :data:`MAX_PIXELS` are ours to decode, so PIL's DecompressionBombWarning (from half
    that) is not printed; above it the image is refused as too large."""
    import warnings

    from PIL import Image

    opened = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                opened = True
                im.load()
                return _pil_rgb(im)
    except Image.DecompressionBombError:
        raise ValueError(f"image too large: over the limit of {MAX_PIXELS:,} pixels") from None
    except Exception as exc:
        raise ValueError(one_line(exc, default="cannot decode") if opened
                         else _short_reason(first)) from None


def _pil_rgb(im) -> Tensor:
    """A PIL image as uint8 ``[3, H, W]`` (a view of ``H, W, 3`` memory)."""
    if im.mode.startswith("I;16"):  # 16-bit grey: PIL's convert("RGB") would clip at 255
        grey = torch.from_numpy(np.array(im).astype(np.uint16))
        return to_uint8(grey).expand(3, *grey.shape)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)


def _short_reason(exc: Exception) -> str:
    """torchvision's decoder errors without their C++ source location, first sentence only."""
    text = one_line(exc, default="cannot decode")
    return text.split(". ")[0].rstrip(".")


def decode_scaled(data: bytearray, scale: int) -> Tensor:
    """Decode JPEG ``data`` at about ``1/scale`` of its size (``scale`` 2, 4 or 8) to uint8
    ``[3, ceil(H/scale), ceil(W/scale)]`` RGB; scale 1 is :func:`decode_full`.

    A file this cannot decode goes to :func:`decode_full`, whose error is the one reported.
    """
    if scale <= 1:
        return decode_full(data)
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            im.draft("RGB", (max(1, w // scale), max(1, h // scale)))
            im.load()
            return _pil_rgb(im)
    except Exception:
        return decode_full(data)


def draft_scale(crop_h: int, crop_w: int, size: int) -> int:
    """The largest reduction (8, 4, 2, else 1) that leaves a ``crop_h x crop_w`` crop at least
    ``size`` pixels on each side."""
    for s in SCALES:
        if crop_h // s >= size and crop_w // s >= size:
            return s
    return 1


def decode_on_device(datas: list[Tensor], device: torch.device
                     ) -> list[Tensor | ValueError]:
    """Decode JPEG byte tensors on ``device`` in one batched call: uint8 ``[3, H, W]`` RGB
    each, or the ValueError of an image that neither the device nor the CPU decoder read.

    When the batch call fails (a corrupt file, a JPEG flavour the device decoder lacks), each
    image is decoded alone, and one the device cannot decode is decoded on the CPU.
    """
    if not datas:
        return []
    mode = tvio.ImageReadMode.RGB
    try:
        return list(tvio.decode_jpeg(datas, mode=mode, device=device))
    except RuntimeError:
        pass
    out: list[Tensor | ValueError] = []
    for data in datas:
        try:
            out.append(tvio.decode_jpeg(data, mode=mode, device=device))
        except RuntimeError:
            try:
                out.append(decode_full(bytearray(data.numpy().tobytes())).to(device))
            except ValueError as exc:
                out.append(exc)
    return out
