"""Data: where images come from and how they become training batches.

- `datasets`: the named sources (tfds CIFAR, image folders) -> an in-memory
  `Split` of uint8 images, labels and class names.
- `image_folder`: reading a folder of class sub-folders (no TensorFlow).
- `input_pipeline`: a split -> per-step batches, each a pure function of
  (seed, step).
- `augmentations`: the draws and ops beyond pad + crop + flip.

Imports: `resnet_jax.errors`, `resnet_jax.logs` and this folder only.
"""
