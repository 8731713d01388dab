"""Data layer: records, readers (VinDr-Mammo DICOM, NIfTI, folders), phantoms, preprocessing cache."""

from audit.data.dataset import ImageDataset, Sample, open_dataset
from audit.data.records import Box, Labels, Record, SkippedFile

__all__ = ["Box", "ImageDataset", "Labels", "Record", "Sample", "SkippedFile", "open_dataset"]
