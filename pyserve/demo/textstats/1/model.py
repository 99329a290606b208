"""Text statistics: for each UTF-8 string, the number of characters and of words.

A pyserve Python-backend model: ``Model.infer`` gets one whole batch at a time.
"""

from __future__ import annotations

import numpy as np


def _decode(value: bytes | str) -> str:
    # Undecodable bytes count as one replacement character each rather than failing the batch:
    # one bad request must not fail the other requests batched with it.
    return value if isinstance(value, str) else bytes(value).decode("utf-8", errors="replace")


class Model:
    """Counts characters and words of each ``text`` element."""

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Map ``{"text": object array of bytes [batch, 1]}`` to ``characters`` and ``words``.

        Both outputs are INT32 arrays shaped like ``text``: the number of Unicode characters of the
        UTF-8 decoded string, and the number of words separated by whitespace.
        """
        text = inputs["text"]
        # Strings have no vectorized length in numpy: one plain pass over the elements is needed.
        decoded = [_decode(value) for value in text.ravel()]
        characters = np.fromiter((len(s) for s in decoded), dtype=np.int32, count=len(decoded))
        words = np.fromiter((len(s.split()) for s in decoded), dtype=np.int32, count=len(decoded))
        return {"characters": characters.reshape(text.shape), "words": words.reshape(text.shape)}
