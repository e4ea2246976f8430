"""The decoding process of :class:`fusion.media.streaming.DecodeWorker`:
``python -m fusion.media.decode_worker '[FPS, MODEL]'``.

Requests arrive pickled on standard input and chunks leave pickled on standard output, which is therefore kept for
them alone: anything a library prints goes to standard error instead.
"""

import json
import os
import sys

from fusion.media.orphans import exit_with_parent
from fusion.media.streaming import serve


def main() -> None:
    exit_with_parent()
    fps, face_model = json.loads(sys.argv[1])
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies, fps=fps, face_model=face_model)


if __name__ == "__main__":
    main()
