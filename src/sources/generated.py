"""The embedded default: generated lungs (binary), nuclei (multiclass), or lungs and the heart over them
(multilabel: labels that overlap), deterministic from the seed."""
from src import demo
from src.sources.sample import Sample, Source


def _labelled_only_in_train(generate, split, which: int = 1):
    def load():
        made = generate()
        return made[0], made[which] if split == "train" else None
    return load


def demo_source(count: int, seed: int, multiclass: bool, test_count: int, multilabel: bool = False) -> Source:
    """The embedded default: generated lungs (binary), nuclei (multiclass) or lungs and heart (multilabel); the
    last test_count unlabelled."""
    samples = []
    for i in range(count + test_count):
        split = "train" if i < count else "test"
        if multiclass:
            load = _labelled_only_in_train(lambda i=i: demo.histology(seed, i), split)
            samples.append(Sample(f"nuclei_{i:04d}", load, split=split, extra={"tissue": demo.tissue_of(seed, i)}))
        else:
            load = _labelled_only_in_train(lambda i=i: demo.chest_xray(seed, i), split, 2 if multilabel else 1)
            samples.append(Sample(f"cxr_{i:04d}", load, split=split, group=f"patient_{i // 2:04d}"))
    if multiclass:
        return Source("multiclass", demo.NUCLEUS_CLASSES, 3, samples, [], rotation_invariant=True)
    if multilabel:
        return Source("multilabel", ["background", "lung", "heart"], 1, samples, [])
    return Source("binary", ["background", "lung"], 1, samples, [])
