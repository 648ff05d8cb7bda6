"""Corpus readers: every way of pointing patchhash at a set of images.

:func:`open_corpus` looks at a URL (a local path or any fsspec URL, with optional storage
options) and returns a :class:`Corpus`. The image id of an image is its position in the
corpus, fixed when the corpus is opened:

======================  ==============================================  ==================
URL                     images, in id order                             uri of image ``i``
======================  ==============================================  ==================
folder                  image files below it, recursively, sorted by    the file's URL
                        full path
glob (``*``, ``?``,     matching image files, sorted by full path       the file's URL
``[``)
image file              that image alone                                the file's URL
``*-idx3-ubyte[.gz]``,  rows of an IDX file of uint8 images             ``<url>#<i>``
``*.idx3[.gz]``
``*.npy``               rows of an ``[n, h, w]`` or ``[n, h, w, c]``    ``<url>#<i>``
                        array, c in 1, 3, 4
Zarr array folder       rows of an array shaped as for ``.npy``         ``<url>#<i>``
``.txt``, ``.lst``      one uri per line; blank lines and lines         the listed uri
                        starting with ``#`` are skipped
``.csv``                the ``uri`` column, else the first column (the  the listed uri
                        first row is always a header)
``.parquet``            the ``uri`` column                              the listed uri
======================  ==============================================  ==================

Image files are recognised by their extension: png, jpg, jpeg, bmp, tif, tiff, gif, webp
(any case). URLs are shown as the user would type them: absolute paths for local files,
``protocol://path`` otherwise.

In a uri list, a uri without a protocol is taken on the list's filesystem, relative to the
list's folder. A uri ending in ``#<row>`` designates a row of an IDX, npy or Zarr array, so
that the uris of search results can be fed back as queries. In CSV and Parquet lists the
image id is the data row number (an empty uri cell is reported as an unreadable image), so
that ids stay aligned with the other columns.

Images that cannot be read (missing, empty, truncated, not an image...) never fail a read:
they are reported as :class:`ReadError` rows of the :class:`ShardData`. A URL that cannot be
read as a whole (unknown format, bad header, wrong array shape) raises :class:`CorpusError`.

Work is cut into :class:`Shard` objects: small and picklable, they carry everything a Dask
worker needs to read their rows without listing the corpus again. Arrays are opened once per
process: IDX files that are gzip-compressed or remote are decoded in full on first use and
kept in a process-wide LRU cache of the two most recently used arrays
(:func:`clear_source_cache` empties it).

Modules: ``_open`` (:func:`open_corpus`: the format of a URL, listing folders and globs),
``_corpus`` (the :class:`Corpus` classes and :class:`Shard`), ``_shard_data``
(:class:`ShardData`, :class:`ReadError`), ``_urilists`` (parsing uri lists), ``_files``
(reading image files and row references), ``_sources`` (the arrays and their process cache)
and the public :mod:`storage.corpus.formats` (IDX, npy, text and CSV readers shared with
:mod:`storage.labels`).
"""

from storage.corpus._corpus import (
    ArrayCorpus,
    Corpus,
    IdxCorpus,
    ImageFilesCorpus,
    NpyCorpus,
    Shard,
    UriListCorpus,
    ZarrCorpus,
)
from storage.corpus._open import IMAGE_EXTENSIONS, open_corpus
from storage.corpus._shard_data import ReadError, ShardData
from storage.corpus._sources import clear_source_cache

# Imported from storage.corpus before it became a package; new code imports them from
# storage.corpus.formats.
from storage.corpus.formats import (  # noqa: F401
    IDX_NAME_PATTERN,
    check_size,
    read_csv_rows,
    read_idx_file,
    read_npy_header,
    read_text,
    reading,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ReadError",
    "ShardData",
    "Shard",
    "Corpus",
    "ImageFilesCorpus",
    "UriListCorpus",
    "ArrayCorpus",
    "IdxCorpus",
    "NpyCorpus",
    "ZarrCorpus",
    "clear_source_cache",
    "open_corpus",
]
