"""structure.py
============

A cheap structural read of a received dataset, for the C-STORE handler: walk its elements
without decoding them, keep the few that the reply and the database row need (UIDs, patient ID,
modality, the image attributes), and say why it is not a whole instance: an element that runs
past the end, an undefined length where none may be, a broken sequence or fragment, pixel data of
the wrong size. Nothing is decompressed and no value but the kept ones is read.

The same walk runs over bytes in memory and over a file read with ``os.pread``, so a dataset
streamed to the spool is checked without being loaded. A deflated dataset is inflated as it is
walked, in bounded chunks.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

#: Elements the handler reads: character set, SOP class/instance, modality, patient ID, study and
#: series UIDs, samples, photometric interpretation, frames, rows, columns, bits allocated.
WANTED = frozenset({0x00080005, 0x00080016, 0x00080018, 0x00080060, 0x00100020, 0x0020000D, 0x0020000E,
                    0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100})
#: A wanted value longer than this is not read (no UID, ID or code string is this long).
MAX_WANTED_LENGTH = 1024
#: Sequences nested deeper than this are refused rather than walked.
MAX_DEPTH = 16
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_CHUNK = 1 << 20


class _Problem(Exception):
    """Why the dataset is not a whole instance (the message is the reason logged and audited)."""


def _tag(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Buffer:
    """Bytes in memory."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, n: int) -> bytes | memoryview:
        chunk = self.view[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def skip(self, n: int) -> int:
        taken = min(n, len(self.view) - self.pos)
        self.pos += taken
        return taken


class _File:
    """A byte range of an open file, read with ``os.pread`` (nothing is mapped or buffered)."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.pos, self.end = fd, start, end

    def read(self, n: int) -> bytes:
        data = os.pread(self.fd, max(0, min(n, self.end - self.pos)), self.pos)
        self.pos += len(data)
        return data

    def skip(self, n: int) -> int:
        taken = max(0, min(n, self.end - self.pos))
        self.pos += taken
        return taken


class _Inflate:
    """A deflated dataset (PS3.5 A.5, raw RFC 1951), inflated at most a chunk at a time."""

    def __init__(self, raw: _Buffer | _File) -> None:
        self.raw = raw
        self.inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self.pending = b""
        self.done = False

    def read(self, n: int) -> bytes:
        while len(self.pending) < n and not self.done:
            data = self.inflater.unconsumed_tail or bytes(self.raw.read(_CHUNK))
            try:
                if not data:
                    self.pending += self.inflater.flush()
                    self.done = True
                    break
                self.pending += self.inflater.decompress(data, n - len(self.pending))
            except zlib.error as exc:
                raise _Problem(f"the deflated dataset cannot be inflated: {exc}") from None
            self.done = self.inflater.eof
        chunk, self.pending = self.pending[:n], self.pending[n:]
        return chunk

    def skip(self, n: int) -> int:
        taken = 0
        while taken < n:
            chunk = self.read(min(n - taken, _CHUNK))
            if not chunk:
                break
            taken += len(chunk)
        return taken


@dataclass(frozen=True)
class Summary:
    """What the C-STORE handler needs from a dataset.

    ``dataset`` holds only the :data:`WANTED` elements, still raw: pydicom decodes each when it
    is read (with the dataset's character set). ``problem`` says why the dataset is not a whole
    instance, or is None.
    """

    dataset: Dataset
    problem: str | None


class _Walker:
    def __init__(self, source: _Buffer | _File | _Inflate, implicit: bool, little: bool) -> None:
        self.source = source
        self.implicit, self.little = implicit, little
        self.endian = "<" if little else ">"
        self.found: dict[int, RawDataElement] = {}
        self.pixel: tuple[str, int] | None = None  # ("native", length) or ("fragments", items)

    def _exactly(self, n: int, what: str) -> bytes | memoryview:
        data = self.source.read(n)
        if len(data) < n:
            raise _Problem(f"the dataset ends inside {what}")
        return data

    def _skip(self, tag: int, length: int) -> None:
        taken = self.source.skip(length)
        if taken < length:
            raise _Problem(f"{_tag(tag)} value is {taken} of {length} bytes")

    def _header(self, implicit: bool) -> tuple[int, bytes | None, int] | None:
        raw = self.source.read(8)
        if not raw:
            return None
        if len(raw) < 8:
            raise _Problem("the dataset ends inside an element header")
        group, element, length = struct.unpack(self.endian + "HHI", raw)
        tag = group << 16 | element
        if implicit or group == 0xFFFE:
            return tag, None, length
        vr = bytes(raw[4:6])
        if vr in _LONG_VRS:
            (length,) = struct.unpack(self.endian + "I", self._exactly(4, f"the header of {_tag(tag)}"))
        elif vr in _SHORT_VRS:
            (length,) = struct.unpack(self.endian + "H", raw[6:8])
        else:
            raise _Problem(f"{_tag(tag)} has an unknown VR {vr!r}")
        return tag, vr, length

    def dataset(self, depth: int, implicit: bool, in_item: bool) -> None:
        while (header := self._header(implicit)) is not None:
            tag, vr, length = header
            if tag == ITEM_END and in_item:
                return
            if tag >> 16 == 0xFFFE:
                raise _Problem(f"unexpected {_tag(tag)} delimiter")
            if length == UNDEFINED:
                if tag == PIXEL_DATA and depth == 0 and not implicit:
                    self.fragments()
                elif vr in (b"SQ", b"UN", None):
                    self.sequence(tag, depth + 1, implicit or vr == b"UN")
                else:
                    raise _Problem(f"{_tag(tag)} has an undefined length but is not a sequence")
            elif depth == 0 and tag in WANTED and length <= MAX_WANTED_LENGTH:
                value = bytes(self._exactly(length, f"the value of {_tag(tag)}"))
                self.found.setdefault(tag, RawDataElement(Tag(tag), vr.decode() if vr else None, length, value, 0,
                                                          implicit, self.little))
            else:
                if depth == 0 and tag == PIXEL_DATA:
                    self.pixel = ("native", length)
                self._skip(tag, length)
        if in_item:
            raise _Problem("the dataset ends inside a sequence item")

    def sequence(self, tag: int, depth: int, implicit: bool) -> None:
        if depth > MAX_DEPTH:
            raise _Problem(f"{_tag(tag)} nests sequences deeper than {MAX_DEPTH}")
        while True:
            group, element, length = struct.unpack(self.endian + "HHI", self._exactly(8, f"the sequence {_tag(tag)}"))
            item = group << 16 | element
            if item == SEQUENCE_END:
                return
            if item != ITEM:
                raise _Problem(f"the sequence {_tag(tag)} holds {_tag(item)} where an item belongs")
            if length == UNDEFINED:
                self.dataset(depth, implicit, in_item=True)
            else:
                self._skip(tag, length)

    def fragments(self) -> None:
        items = 0
        while True:
            group, element, length = struct.unpack(self.endian + "HHI", self._exactly(8, "(7FE0,0010) Pixel Data"))
            tag = group << 16 | element
            if tag == SEQUENCE_END:
                self.pixel = ("fragments", items)
                return
            if tag != ITEM or length == UNDEFINED:
                raise _Problem(f"(7FE0,0010) Pixel Data holds {_tag(tag)} where a fragment item belongs")
            self._skip(PIXEL_DATA, length)
            items += 1


def _pixel_problem(ds: Dataset, pixel: tuple[str, int] | None, transfer_syntax: UID) -> str | None:
    """Pixel data of the size the image attributes need (native), or at least one fragment."""
    if pixel is None:
        return None
    kind, value = pixel
    if transfer_syntax.is_transfer_syntax and (kind == "fragments") != transfer_syntax.is_encapsulated:
        return (f"(7FE0,0010) Pixel Data is {'encapsulated' if kind == 'fragments' else 'native'} in "
                f"transfer syntax {transfer_syntax}")
    try:
        frames_value = ds.get("NumberOfFrames")
        frames = int(frames_value) if frames_value not in (None, "") else 1
        if frames < 1:
            return f"(0028,0008) Number of Frames is {frames}"
        if kind == "fragments":
            return None if value > 1 else "(7FE0,0010) Pixel Data holds no fragment"
        samples = int(ds.get("SamplesPerPixel", 1))
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":  # PS3.3 C.7.6.3.1.2: 2 values a pixel
            samples = 2
        expected = (int(ds.Rows) * int(ds.Columns) * samples * frames * int(ds.BitsAllocated) + 7) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        return f"(7FE0,0010) Pixel Data cannot be checked: {type(exc).__name__}"
    if value not in (expected, expected + expected % 2):
        return f"(7FE0,0010) Pixel Data is {value} bytes, the image attributes need {expected}"
    return None


def _summarize(source: _Buffer | _File, transfer_syntax: UID) -> Summary:
    transfer_syntax = UID(transfer_syntax)
    implicit = transfer_syntax == ImplicitVRLittleEndian
    # A private transfer syntax (network.extra_transfer_syntaxes) is walked as explicit VR little endian.
    little = transfer_syntax.is_little_endian if transfer_syntax.is_transfer_syntax else True
    walker = _Walker(_Inflate(source) if transfer_syntax == DeflatedExplicitVRLittleEndian else source,
                     implicit, little)
    try:
        walker.dataset(0, implicit, in_item=False)
        problem = None
    except _Problem as exc:
        problem = str(exc)
    dataset = Dataset(walker.found)
    dataset.set_original_encoding(implicit, little)
    return Summary(dataset, problem or _pixel_problem(dataset, walker.pixel, transfer_syntax))


def summarize(data: bytes | bytearray | memoryview, transfer_syntax: str) -> Summary:
    """Walk a dataset held in memory (no file meta), encoded in ``transfer_syntax``."""
    return _summarize(_Buffer(data), UID(transfer_syntax))


def summarize_file(path: Path, transfer_syntax: str) -> Summary:
    """Walk the dataset of a DICOM Part 10 file after its preamble and file meta, read with pread.

    Raises
    ------
    ValueError
        If ``path`` is not a Part 10 file (no ``DICM`` prefix or no group length element).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, 144, 0)
        if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
            raise ValueError(f"{path} is not a DICOM file with a file meta group length")
        (group_length,) = struct.unpack("<I", head[140:144])
        return _summarize(_File(fd, 144 + group_length, os.fstat(fd).st_size), UID(transfer_syntax))
    finally:
        os.close(fd)
