"""part10.py
=========

The DICOM Part 10 header (128-byte preamble, ``DICM``, file meta group) sonoshot writes in front
of each received dataset: the same bytes as ``pynetdicom.dsutils.encode_file_meta`` of
``create_file_meta`` (what ``Event.encoded_dataset()`` prepends), encoded directly, because
pydicom's general writer costs more per instance than the rest of the C-STORE handler's decoding.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREFIX = b"\0" * 128 + b"DICM"
_VERSION = struct.pack("<HH2sHIH", 0x0002, 0x0001, b"OB", 0, 2, 0x0100)  # (0002,0001) OB 00\01


def _element(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    if len(data) % 2:
        data += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(data)) + data


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and file meta group for a dataset in ``transfer_syntax_uid``.

    Raises
    ------
    ValueError
        If a UID is not ASCII or longer than 64 characters.
    """
    for name, uid in (("sop_class_uid", sop_class_uid), ("sop_instance_uid", sop_instance_uid),
                      ("transfer_syntax_uid", transfer_syntax_uid)):
        if not isinstance(uid, str) or not uid.isascii() or len(uid) > 64:
            raise ValueError(f'Argument "{name}" must be an ASCII UID of at most 64 characters; got {uid!r}.')
    group = b"".join((_VERSION, _element(0x0002, b"UI", sop_class_uid, b"\0"),
                      _element(0x0003, b"UI", sop_instance_uid, b"\0"),
                      _element(0x0010, b"UI", transfer_syntax_uid, b"\0"),
                      _element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID, b"\0"),
                      _element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION, b" ")))
    return _PREFIX + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group)) + group
