"""The embedded default: generated lungs (binary) or nuclei (multiclass), deterministic from the seed."""
from src import demo
from src.sources.sample import Sample, Source


def _labelled_only_in_train(generate, split):
    def load():
        image, mask = generate()[:2]
        return image, mask if split == "train" else None
    return load


def demo_source(count: int, seed: int, multiclass: bool, test_count: int) -> Source:
    """The embedded default: generated lungs (binary) or nuclei (multiclass); the last test_count unlabelled."""
    samples = []
    for i in range(count + test_count):
        split = "train" if i < count else "test"
        if multiclass:
            load = _labelled_only_in_train(lambda i=i: demo.histology(seed, i), split)
            samples.append(Sample(f"nuclei_{i:04d}", load, split=split, extra={"tissue": demo.tissue_of(seed, i)}))
        else:
            load = _labelled_only_in_train(lambda i=i: demo.chest_xray(seed, i), split)
            samples.append(Sample(f"cxr_{i:04d}", load, split=split, group=f"patient_{i // 2:04d}"))
    if multiclass:
        return Source("multiclass", demo.NUCLEUS_CLASSES, 3, samples, [], rotation_invariant=True)
    return Source("binary", ["background", "lung"], 1, samples, [])
