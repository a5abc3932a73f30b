"""Image embeddings computed once and reused while the image encoder stays in float."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ptqsam.inference import ImageEmbedding
from ptqsam.io import write_atomic

log = logging.getLogger("ptqsam")


class EmbeddingCache:
    """Float image embeddings by key, in memory or on disk.

    Keys should name everything the embedding depends on: model type, checkpoint hash and image
    (see :func:`embedding_key`). In memory the cache grows with the images it sees (fine for a few
    dozen); for a full dataset give a directory: nothing is then kept in memory, files are written
    atomically and survive between runs.

    Arguments:
      directory: folder of the disk cache, or None to keep embeddings in memory.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, ImageEmbedding] = {}

    def get(self, key: str) -> ImageEmbedding | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = torch.load(path, weights_only=True)
            return ImageEmbedding(data["features"], tuple(data["input_size"]), tuple(data["original_size"]))
        except Exception as error:  # torch raises many types for a corrupt file: compute it again
            log.warning("cached embedding %s cannot be read (%s): computing it again", path, type(error).__name__)
            return None

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        embedding = ImageEmbedding(embedding.features.detach(), embedding.input_size, embedding.original_size)
        path = self._path(key)
        if path is None:
            self._memory[key] = embedding
        else:
            data = {
                "features": embedding.features.cpu(),
                "input_size": list(embedding.input_size),
                "original_size": list(embedding.original_size),
            }
            write_atomic(path, lambda f: torch.save(data, f), mode="wb")

    def __len__(self) -> int:
        return len(self._memory)

    def _path(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".pt")


def embedding_key(model_type: str, checkpoint_id: str, image_id: int, image_size: int, data_id: str = "",
                  image_hash: str = "", arithmetic: str = "") -> str:
    """The cache key of one image's float embedding under one model and checkpoint; ``data_id``
    names the dataset (e.g. its annotations file's hash), so that the same image id of another
    dataset in the same cache folder is another key; ``image_hash`` the image file's content (an
    image replaced under the same name is another key); ``arithmetic`` a hash of what the float
    arithmetic depends on (device, machine, torch, threads: another machine's embedding differs in
    its last bits)."""
    return f"{model_type}-{checkpoint_id}-{image_size}-{data_id}-{image_id}-{image_hash}-{arithmetic}"
