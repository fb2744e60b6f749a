"""Comparing two database images page by page (`backups verify`: a restored image against a copy
of the live database), both read a piece at a time."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from backups.spool import PIECE


def differing_pages(a: Iterator[bytes], b: Iterator[bytes], page_size: int, most: int = 100) -> list[int]:
    """The numbers of the first `most` pages that differ between two images given as PIECE-byte
    pieces (a multiple of any page size); a page only one of them has differs."""
    differing: list[int] = []
    for index, (x, y) in enumerate(itertools.zip_longest(a, b, fillvalue=b"")):
        if index == 0:
            x, y = without_write_stamps(x), without_write_stamps(y)
        if x == y:
            continue
        first = index * (PIECE // page_size)
        for i in range(max(len(x), len(y)) // page_size):
            if x[i * page_size : (i + 1) * page_size] != y[i * page_size : (i + 1) * page_size]:
                differing.append(first + i + 1)
                if len(differing) == most:
                    return differing
    return differing


def without_write_stamps(image: bytes) -> bytes:
    """The image with the header fields that say which write made it, not what it holds, zeroed:
    the file change counter, version-valid-for and the SQLite version that wrote it
    (sqlite.org/fileformat2.html#the_database_header). A copy through the backup API stamps its
    own, so a restored page 1 and a copy of the live one differ there whenever both are sound."""
    if len(image) < 100:
        return image
    return image[:24] + bytes(4) + image[28:92] + bytes(8) + image[100:]
