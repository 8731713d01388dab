"""Downstream utility of a synthetic set: does a classifier trained on it work on real patients?

- `targets`: what the classifier predicts, by name (malignancy, density, finding, lesion, label:<column>), as a
  rule from a record's labels to a class index;
- `classifiers`: the networks by name (a timm backbone in 2D, a small MONAI ResNet in 3D), 1 channel, from
  scratch or from local safetensors weights;
- `training`: one recipe and budget (optimizer steps, batch size, learning rate, augmentation), seeded;
- `data`: labelled image sets (images of one or more datasets with their class index and patient);
- `plots`: the ROC figure.

The evaluation (TSTR / TRTR / mixed, AUCs with patient-level bootstrap intervals) is `audit.metrics.utility`.
"""
