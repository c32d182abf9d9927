"""btpipe: brain-tumour MRI to segmentation, radiomics, survival models and report."""

__version__ = "0.1.0"

SEQUENCES = ("t1", "t1ce", "t2", "flair")
