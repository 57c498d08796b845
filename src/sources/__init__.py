"""Dataset sources: each turns what a publisher distributes into a list of Samples plus the problems found.

One module per format: folder.py (image and mask folders; chest X-ray layouts), rle_csv.py (Kaggle RLE CSVs),
pannuke.py (PanNuke's fold arrays), volumes.py (NIfTI volumes as slices), generated.py (the embedded demo); metadata.py adds a CSV's groups and columns.
"""
from src.sources.folder import chest_xray, folder, mask_key, patient_of
from src.sources.generated import demo_source
from src.sources.metadata import attach_metadata
from src.sources.pannuke import PANNUKE_CLASSES, pannuke, pannuke_class_map
from src.sources.rle_csv import rle_csv
from src.sources.sample import Sample, Source, as_regions
from src.sources.volumes import decathlon_cases, folder_cases, volume_source
from src.portable.volumes import volume_files

__all__ = ["PANNUKE_CLASSES", "Sample", "Source", "as_regions", "attach_metadata", "chest_xray", "demo_source",
           "folder", "mask_key", "pannuke", "pannuke_class_map", "patient_of", "rle_csv",
           "decathlon_cases", "folder_cases", "volume_files", "volume_source"]
