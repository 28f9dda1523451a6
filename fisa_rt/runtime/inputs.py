"""What ``infer --input`` accepts: an image file, a folder, a glob, a video file or a camera index —
all turned into one stream of (name, RGB uint8 frame)."""

from __future__ import annotations

import glob
import os
from collections import Counter
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError, MissingDependencyError
from .images import DEFAULT_MAX_PIXELS, load_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _cv2():
    # FFmpeg logs to stderr on its own unless told otherwise, before the first capture is opened (-8: quiet)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "video and camera input need OpenCV: pip install opencv-python-headless (or pip install -e '.[video]')"
        ) from None
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # failures are reported once, as an InputError
    return cv2


def output_names(paths: Sequence[str]) -> List[str]:
    """One output name per input path: its stem, or, where stems collide (``x.png`` and ``x.jpg``, or two
    folders' ``x.png``), the stem with the suffix (``x_png``), then a counter, so no result replaces another."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = Counter(stems)
    names, used = [], set()
    for path, stem in zip(paths, stems):
        name = stem if counts[stem] == 1 else f"{stem}_{os.path.splitext(path)[1].lstrip('.').lower()}"
        candidate, n = name, 1
        while candidate in used or (candidate != stem and candidate in counts):
            n += 1
            candidate = f"{name}_{n}"
        used.add(candidate)
        names.append(candidate)
    return names


class Source:
    """``len()`` is the number of frames when known (files, folders, videos), else 0 (cameras)."""

    def __init__(self, spec: str, max_pixels: Optional[int] = DEFAULT_MAX_PIXELS):
        self.spec = spec
        self.max_pixels = max_pixels
        self.kind, self.items = self._resolve(spec)
        # output names known before reading: every image's, a video's first frame's (a rerun is refused at once)
        self.names = {"images": output_names(self.items), "video": [self._frame_name(0)]}.get(self.kind, [])

    def _frame_name(self, index: int) -> str:
        if self.kind == "camera":
            return f"camera{self.items[0]}_{index:06d}"
        stem = os.path.splitext(os.path.basename(self.items[0]))[0]
        return f"{stem}_{index:06d}"

    @staticmethod
    def _resolve(spec: str) -> Tuple[str, List[str]]:
        if spec.isdigit() and not os.path.exists(spec):
            if int(spec) >= 2 ** 31:  # OpenCV's index is a C int: larger ones failed inside it with a traceback
                raise InputError(f"input {spec} is no camera index (0, 1, ...) nor an existing file")
            return "camera", [spec]
        if os.path.isdir(spec):
            files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_SUFFIXES))
            if not files:
                raise InputError(f"folder {spec} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            return "images", files
        if os.path.isfile(spec):
            if spec.lower().endswith(VIDEO_SUFFIXES):
                return "video", [spec]
            return "images", [spec]
        matches = sorted(f for f in glob.glob(spec) if f.lower().endswith(IMAGE_SUFFIXES))
        if any(c in spec for c in "*?[") and matches:
            return "images", matches
        raise InputError(f"input {spec} is not an image, folder, glob with matches, video file or camera index")

    def __len__(self) -> int:
        if self.kind == "images":
            return len(self.items)
        if self.kind == "video":
            cv2 = _cv2()
            capture = cv2.VideoCapture(self.items[0])
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            capture.release()
            return max(count, 0)
        return 0

    def __iter__(self) -> Iterator[Tuple[str, np.ndarray]]:
        return self.frames()

    def frames(self, skip: Optional[Callable[[InputError], None]] = None) -> Iterator[Tuple[str, np.ndarray]]:
        """(output name, RGB frame) per input. An image that cannot be read raises its InputError, or,
        given ``skip``, is handed to it and left out (a folder goes on past one bad file)."""
        if self.kind == "images":
            for path, name in zip(self.items, self.names):
                try:
                    image = load_image(path, self.max_pixels)
                except InputError as exc:
                    if skip is None:
                        raise
                    skip(exc)
                    continue
                yield name, image
            return
        cv2 = _cv2()
        target = int(self.items[0]) if self.kind == "camera" else self.items[0]
        capture = cv2.VideoCapture(target)
        if not capture.isOpened():
            raise InputError(f"cannot open {'camera' if self.kind == 'camera' else 'video'} {self.items[0]}")
        index = 0
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    if index == 0:
                        raise InputError(f"{self.items[0]} yields no frames (corrupt or unsupported video)")
                    return
                yield self._frame_name(index), np.ascontiguousarray(frame[:, :, ::-1])
                index += 1
        finally:
            capture.release()
