"""Encoded images from a request -> one preprocessed NCHW float32 batch.

Runs in the decode pool, never on the event loop: decoding a large JPEG takes tens
of milliseconds of CPU. Every failure is an `InputError` naming the image (its
position, and the file name a multipart upload gave), answered 400.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.images import InputError, decode_image, preprocess


def images_to_batch(
    images: list[tuple[str, bytes]], input_meta: dict[str, Any], max_pixels: int
) -> np.ndarray:
    """`images`: (source name for messages, encoded bytes) per image."""
    if not images:
        raise InputError("no image in the request")
    rows = []
    for source, data in images:
        image = decode_image(data, source, max_pixels)
        try:
            rows.append(preprocess(image, input_meta, source))
        except (InputError, MemoryError):
            raise
        except Exception as exc:  # odd EXIF blocks or modes in untrusted files
            raise InputError(f"{source}: cannot preprocess this image ({exc})") from exc
        finally:
            image.close()
    return np.stack(rows)
