"""Per-image work on the host (decoding, resizing, thresholding, scoring, writing masks) spread over threads.

Threads, not processes: the heavy calls (cv2's labelling and resizing, numpy, scipy.ndimage) release the GIL, and
threads share the low-resolution maps without pickling them.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from tqdm import tqdm


def thread_map(fn, items: list, desc: str) -> list:
    """[fn(item) for item in items], computed by one thread per core, with a progress bar."""
    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="img"))
