"""Label Studio's brush RLE: the bit-packed run-length code of a mask's RGBA pixels (`"format": "rle"`).

It is not COCO RLE. Label Studio (its front end, through `@thi.ng/rle-pack`, and `label-studio-converter`'s
`brush.encode_rle`) codes the flattened (H, W, 4) uint8 RGBA array of the region, row-major, as one bit stream
(most significant bit first) stored as a list of byte values:

* a header: the number of values (32 bits, H * W * 4), the word size minus 1 (5 bits), and four run-length field
  sizes minus 1 (4 bits each; Label Studio writes word size 8 and field sizes 3, 4, 8, 16);
* then records until every value is filled: a flag bit (1: one value repeated, 0: values written one by one),
  2 bits choosing one of the four field sizes, the count minus 1 in that many bits, then one word (repeat) or
  `count` words (literal);
* zero bits up to the next byte (the converter always adds 1 to 8 of them).

The mask is the alpha channel, foreground where it is above 0 (as the converter reads it). Our encoder writes
what `brush.encode_rle` writes for a mask with all four channels 255 on the foreground, byte for byte: a single
value as a literal of one, longer runs as repeats in the smallest field that holds them, runs longer than 2**16
split. The decoder takes any word and field sizes and literal blocks of any length, as the front end writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sam3_model.formats import FormatProblem

WORD_SIZE = 8
RLE_SIZES = (3, 4, 8, 16)  # bits of the four run-length fields Label Studio writes
HEADER_BITS = 32 + 5 + 4 * 4
CHANNELS = 4  # RGBA
FOREGROUND = 255  # the value of every channel of a foreground pixel in what we write
LITERAL_LOOP_MAX = 16  # literal blocks up to this many words are read one by one, longer ones at once


def encode_mask(mask: np.ndarray) -> list[int]:
    """A binary (H, W) mask -> Label Studio brush RLE (byte values), RGBA 255 on the foreground."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    flat = np.ascontiguousarray(mask).reshape(-1) != 0  # (H*W,) row-major, as the RGBA buffer
    lengths, values = _runs(flat)
    return _encode_runs(lengths * CHANNELS, values.astype(np.int64) * FOREGROUND, flat.size * CHANNELS)


def encode_values(values: np.ndarray, word_size: int = WORD_SIZE,
                  rle_sizes: Sequence[int] = RLE_SIZES) -> list[int]:  # fmt: skip
    """Any 1-D array of non-negative integers (e.g. a flattened RGBA image) -> brush RLE byte values."""
    values = np.asarray(values).reshape(-1)
    if values.size and (values.min() < 0 or int(values.max()) >= 1 << word_size):
        raise ValueError(f"values must lie in [0, {(1 << word_size) - 1}] for word size {word_size}")
    lengths, run_values = _runs(values)
    return _encode_runs(lengths, run_values.astype(np.int64), values.size, word_size, tuple(rle_sizes))


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the runs of equal neighbours of a 1-D array."""
    if not values.size:
        return np.zeros(0, np.int64), np.zeros(0, values.dtype)
    ends = np.r_[np.flatnonzero(values[1:] != values[:-1]), values.size - 1]  # (R,) last index of each run
    return np.diff(np.r_[-1, ends]).astype(np.int64), values[ends]


def _encode_runs(lengths: np.ndarray, values: np.ndarray, num: int, word_size: int = WORD_SIZE,
                 rle_sizes: tuple[int, ...] = RLE_SIZES) -> list[int]:  # fmt: skip
    """Pack runs as brush RLE records: a literal of one for a single value, else a repeat."""
    if not (1 <= word_size <= 32 and len(rle_sizes) == 4 and all(1 <= s <= 16 for s in rle_sizes)):
        raise ValueError(f"word size must be 1..32 and four field sizes 1..16, got {word_size}, {rle_sizes}")
    if num >= 1 << 32:
        raise ValueError(f"{num} values do not fit the 32-bit header")
    longest = 1 << max(rle_sizes)
    capacity = np.array([1 << s for s in rle_sizes], np.int64)
    holds = np.minimum(lengths, longest)[:, None] <= capacity[None, :]
    run_field = np.where(holds, capacity[None, :], np.iinfo(np.int64).max).argmin(axis=1)  # (R,) smallest that fits
    full, rest = np.divmod(lengths, longest)  # a run longer than the widest field: full chunks, then the rest
    pieces = full + (rest > 0)
    chunk_lengths = np.full(int(pieces.sum()), longest, np.int64)
    chunk_lengths[np.cumsum(pieces)[rest > 0] - 1] = rest[rest > 0]
    field = np.repeat(run_field, pieces)  # (C,) every chunk of a long run keeps its field and its repeat flag
    repeat = np.repeat(lengths > 1, pieces).astype(np.int64)
    fields = np.stack([repeat, field, chunk_lengths - 1, np.repeat(values, pieces)], axis=1)
    widths = np.stack([np.ones_like(field), np.full_like(field, 2), np.asarray(rle_sizes)[field],
                       np.full_like(field, word_size)], axis=1)  # fmt: skip
    header = [(num, 32), (word_size - 1, 5)] + [(s - 1, 4) for s in rle_sizes]
    all_values = np.r_[[v for v, _ in header], fields.reshape(-1)].astype(np.int64)
    all_widths = np.r_[[w for _, w in header], widths.reshape(-1)].astype(np.int64)
    total = int(all_widths.sum())
    owner = np.repeat(np.arange(len(all_widths)), all_widths)  # (B,) the field each bit belongs to
    position = np.arange(total) - np.repeat(np.cumsum(all_widths) - all_widths, all_widths)
    bits = (all_values[owner] >> (all_widths[owner] - 1 - position)) & 1
    bits = np.r_[bits, np.zeros(8 - total % 8, np.int64)]  # 1..8 zero bits, as the converter pads
    return np.packbits(bits.astype(np.uint8)).tolist()


class _BitReader:
    """Reads big-endian bit fields of up to 32 bits from a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data) * 8
        self.pos = 0
        self._bits: np.ndarray | None = None

    def read(self, n: int) -> int:
        end = self.pos + n
        if end > self.size:
            raise FormatProblem(f"brush RLE ends early (bit {self.size} of {len(self.data)} bytes; more values due)")
        first, last = self.pos >> 3, (end - 1) >> 3
        chunk = int.from_bytes(self.data[first:last + 1], "big")
        self.pos = end
        return (chunk >> ((last + 1) * 8 - end)) & ((1 << n) - 1)

    def words(self, count: int, size: int) -> np.ndarray:
        """`count` words of `size` bits at once."""
        end = self.pos + count * size
        if end > self.size:
            raise FormatProblem(f"brush RLE ends early (bit {self.size} of {len(self.data)} bytes; more values due)")
        if self._bits is None:
            self._bits = np.unpackbits(np.frombuffer(self.data, np.uint8)).astype(np.int64)
        block = self._bits[self.pos:end].reshape(count, size)
        self.pos = end
        return block @ (1 << np.arange(size - 1, -1, -1, dtype=np.int64))


def rle_bytes(rle: Any) -> bytes:
    """A brush RLE as JSON holds it (a list of byte values) -> bytes, or `FormatProblem`."""
    if not isinstance(rle, (list, tuple)) or not rle:
        raise FormatProblem(f"brush 'rle' must be a non-empty list of byte values, got {type(rle).__name__}")
    try:
        return bytes(rle)
    except (TypeError, ValueError):
        bad = next((v for v in rle if not (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255)), None)
        raise FormatProblem(f"brush 'rle' holds {bad!r}, not a byte value 0..255") from None


def decode_values(rle: Any, expected: int | None = None) -> np.ndarray:
    """Brush RLE (byte values) -> the 1-D array it codes; `expected` checks the value count before decoding."""
    reader = _BitReader(rle_bytes(rle))
    num = reader.read(32)
    if expected is not None and num != expected:
        raise FormatProblem(f"brush RLE codes {num} values; the image needs {expected} (width x height x 4)")
    word_size = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, np.uint8 if word_size <= 8 else np.uint32)
    i = 0
    while i < num:
        head = reader.read(3)  # flag bit, then the field choice
        j = i + 1 + reader.read(sizes[head & 3])
        if j > num:
            raise FormatProblem(f"brush RLE run overshoots: values {i}..{j - 1} of {num}")
        if head & 4:
            out[i:j] = reader.read(word_size)
        elif j - i <= LITERAL_LOOP_MAX:
            for k in range(i, j):
                out[k] = reader.read(word_size)
        else:
            out[i:j] = reader.words(j - i, word_size)
        i = j
    return out


def decode_mask(rle: Any, height: int, width: int) -> np.ndarray:
    """Brush RLE of a (height, width) image -> binary (H, W) uint8 mask (alpha above 0), or `FormatProblem`."""
    values = decode_values(rle, height * width * CHANNELS)
    return (values.reshape(height, width, CHANNELS)[:, :, 3] > 0).astype(np.uint8)
