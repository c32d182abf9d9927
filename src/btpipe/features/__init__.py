"""Per-subject tabular and slice features.

- :mod:`btpipe.features.radiomics`: pyradiomics features per sequence and tumour region
  (one row per subject), merged with the shape/location features.
- :mod:`btpipe.features.shape`: volumes, surface area, location of the tumour.
- :mod:`btpipe.features.slices`: anchor-slice bags for the slice-based deep survival models.
- :mod:`btpipe.features.cohort`: cohort tables from the per-subject files.

See docs/features.md for the column names and conventions.
"""
