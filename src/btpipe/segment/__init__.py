"""Segmentation stage: fold assignment, MONAI training and inference, BraTS scoring.

Modules: ``folds`` (stable k-fold assignment), ``data`` (loading and
transforms), ``networks`` (SegResNet/DynUNet, checkpoint and MONAI-bundle
loading), ``train`` (seeded, resumable training), ``infer`` (sliding-window
ensemble inference), ``postprocess`` (ET small-volume rule), ``metrics``
(BraTS Dice/HD95/sensitivity/specificity and cohort tables).
"""
