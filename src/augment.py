"""Albumentations presets. Images arrive already at training size from the cache, so nothing here resizes."""
import albumentations as A


def _geometry(scale, shift, rotate, p):
    return A.Affine(scale=(1 - scale, 1 + scale), translate_percent=(-shift, shift), rotate=(-rotate, rotate), p=p)


def build_augmentation(preset: str, rotation_invariant: bool = False) -> A.Compose | None:
    """none / light (flip, shift-scale-rotate) / medium (+ contrast, coarse dropout) / heavy (+ distortion, noise).

    rotation_invariant (histology): vertical flips and 90-degree turns too, which d4 test-time augmentation needs.
    """
    if preset == "none":
        return None
    flips = [A.HorizontalFlip(p=0.5)] + ([A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)] if rotation_invariant else [])
    light = [*flips, _geometry(0.1, 0.0625, 10, 0.5)]
    medium = [*flips, _geometry(0.15, 0.0625, 15, 0.7),
              A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
              A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.12), hole_width_range=(0.05, 0.12), p=0.3)]
    heavy = medium + [A.OneOf([A.GridDistortion(p=1), A.ElasticTransform(alpha=30, sigma=6, p=1)], p=0.3),
                      A.GaussNoise(std_range=(0.02, 0.08), p=0.3), A.RandomGamma(p=0.3)]
    presets = {"light": light, "medium": medium, "heavy": heavy}
    if preset not in presets:
        raise ValueError(f"unknown augmentation preset '{preset}'; choose none, light, medium or heavy")
    return A.Compose(presets[preset])
