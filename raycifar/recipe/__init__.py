"""The recipe in plain PyTorch, on one process: its settings (`config`: frozen, validated
dataclasses, one source of defaults), the spec's network (`model`), the data and its
augmentation (`data`, `transforms`, `batch_augment`), One Cycle (`schedule`), one training step,
epoch and evaluation (`engine`), the LR range test's sweep and readings (`lr_finder`), what a
checkpoint holds (`state`), the device and precision (`runtime`), progress lines and logs. It
imports no other layer, no Ray, and writes no run folder: a notebook can train with it alone.
"""
