"""Albumentations presets. Images arrive already at the working size from the cache, so nothing here resizes; a run
trained on patches (--patch) crops them first."""
import albumentations as A


def _geometry(scale, shift, rotate, p):
    return A.Affine(scale=(1 - scale, 1 + scale), translate_percent=(-shift, shift), rotate=(-rotate, rotate), p=p)


def patch_crop(patch: int, foreground: float) -> A.OneOf:
    """A patch x patch crop, around a foreground pixel for a share `foreground` of the samples, anywhere otherwise.

    OneOf draws one of the two per sample with these probabilities, so the share is exact in expectation, as
    nnU-Net's oversample_foreground_percent. CropNonEmptyMaskIfExists puts a random foreground pixel (any class but
    0) at a random place of the patch, and crops anywhere when the mask is empty; RandomCrop is uniform.
    """
    return A.OneOf([A.CropNonEmptyMaskIfExists(patch, patch, p=foreground), A.RandomCrop(patch, patch, p=1 - foreground)],
                   p=1)


def build_augmentation(preset: str, rotation_invariant: bool = False, patch: int = 0,
                       foreground: float = 0.33, square: bool = True) -> A.Compose | None:
    """none / light (flip, shift-scale-rotate) / medium (+ contrast, coarse dropout) / heavy (+ distortion, noise).

    rotation_invariant (histology): vertical flips and 90-degree turns too, which d4 test-time augmentation needs;
    the turns only where the model's input is square (a turned strip is another shape, which no batch can hold).
    patch: crop a patch first (patch_crop), which the preset then augments; 0 builds no crop at all, so that the
    preset's random draws are those of a run without patches.
    """
    crop = [patch_crop(patch, foreground)] if patch else []
    if preset == "none":
        return A.Compose(crop) if crop else None
    turns = [A.RandomRotate90(p=0.5)] if square else []
    flips = [A.HorizontalFlip(p=0.5)] + ([A.VerticalFlip(p=0.5), *turns] if rotation_invariant else [])
    light = [*flips, _geometry(0.1, 0.0625, 10, 0.5)]
    medium = [*flips, _geometry(0.15, 0.0625, 15, 0.7),
              A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
              A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.12), hole_width_range=(0.05, 0.12), p=0.3)]
    heavy = medium + [A.OneOf([A.GridDistortion(p=1), A.ElasticTransform(alpha=30, sigma=6, p=1)], p=0.3),
                      A.GaussNoise(std_range=(0.02, 0.08), p=0.3), A.RandomGamma(p=0.3)]
    presets = {"light": light, "medium": medium, "heavy": heavy}
    if preset not in presets:
        raise ValueError(f"unknown augmentation preset '{preset}'; choose none, light, medium or heavy")
    return A.Compose(crop + presets[preset])


def training_augmentation(cfg, meta: dict) -> A.Compose | None:
    """The run's augmentation of its training samples: patches first for a run that tiles (cfg.tiles)."""
    return build_augmentation(cfg.aug, meta.get("rotation_invariant", False), cfg.patch if cfg.tiles else 0,
                              cfg.foreground_patches, square=cfg.tiles or isinstance(cfg.size, int))
