"""Input pipeline: augmentation, determinism, epochs, per-process rows, eval padding."""

import numpy as np

from resnet_jax.data import augmentations
from resnet_jax.data import batch_workers
from resnet_jax.data import datasets
from resnet_jax.data import device_pipeline
from resnet_jax.data import input_pipeline


def _split(n, seed=0):
  rng = np.random.default_rng(seed)
  return input_pipeline.Split(
      images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      labels=np.arange(n, dtype=np.int32), class_names=())


def test_augment_is_a_padded_crop_and_optional_flip():
  images = _split(64).images
  out = input_pipeline.augment(images, np.random.default_rng(3))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  for i in range(len(images)):
    windows = [padded[i, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    match = [np.array_equal(out[i], w) for w in windows]
    flipped = [np.array_equal(out[i], w[:, ::-1]) for w in windows]
    assert any(match) or any(flipped), i
  # Both flips and several offsets occur.
  identity = sum(np.array_equal(out[i], images[i]) for i in range(len(images)))
  assert identity < len(images) // 4
  # Half the images are flipped: over 4,096 draws a flip rate of 0.5 lies in
  # 0.5 ± 0.06 with probability 1 - 1e-14 (a pipeline that never, or always,
  # flips fails), and the 81 crop offsets each occur.
  ys, xs, flips = input_pipeline.augment_draws(np.random.default_rng(5), 4096)
  assert abs(np.mean(flips) - 0.5) < 0.06
  assert len(set(zip(ys.tolist(), xs.tolist()))) == 81
  flipped = input_pipeline.augment(np.repeat(images[:1], 256, 0), np.random.default_rng(6))
  mirrored = sum(any(np.array_equal(f, w[:, ::-1]) for w in (
      padded[0, y:y + 32, x:x + 32] for y in range(9) for x in range(9)))
      and not any(np.array_equal(f, w) for w in (
          padded[0, y:y + 32, x:x + 32] for y in range(9) for x in range(9)))
      for f in flipped)
  assert 0.35 < mirrored / 256 < 0.65  # Flips reach the images, not only the draws.


def test_batches_are_a_pure_function_of_the_step():
  split = _split(50)
  a = input_pipeline.TrainStream(split, 16, seed=1)
  b = input_pipeline.TrainStream(split, 16, seed=1)
  for step in (5, 0, 3, 7):  # Any order, any instance: the same batch.
    np.testing.assert_array_equal(a.batch(step)['image'], b.batch(step)['image'])
  c = input_pipeline.TrainStream(split, 16, seed=2)
  assert not np.array_equal(a.batch(0)['label'], c.batch(0)['label'])


def test_every_example_once_per_epoch_and_batches_straddle_epochs():
  split = _split(50)
  stream = input_pipeline.TrainStream(split, 16, seed=0, augment_images=False)
  labels = np.concatenate([stream.batch(s)['label'] for s in range(25)])  # 8 epochs
  for epoch in range(8):
    assert sorted(labels[epoch * 50:(epoch + 1) * 50]) == list(range(50))
  assert not np.array_equal(labels[:50], labels[50:100])  # Reshuffled.


def test_processes_take_disjoint_rows_of_the_same_global_batch():
  split = _split(50)
  whole = input_pipeline.TrainStream(split, 16, seed=4).batch(9)
  parts = [input_pipeline.TrainStream(split, 16, seed=4, process_index=i,
                                      process_count=4).batch(9) for i in range(4)]
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_eval_batches_count_every_example_once():
  split = _split(37)
  batches = list(input_pipeline.eval_batches(split, 16))
  assert [len(b['label']) for b in batches] == [16, 16, 16]
  real = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(real, np.arange(37))
  assert sum(b['mask'].sum() for b in batches) == 37


def test_normalize_uses_channel_statistics():
  x = np.full((1, 1, 1, 3), 255, np.uint8)
  mean, std = datasets.MEAN_STD['cifar10']
  # Two float32 roundings of values near 2: a few ulps (1 ulp = 2.4e-7).
  np.testing.assert_allclose(
      np.asarray(device_pipeline.normalize(x, (mean, std)))[0, 0, 0],
      (1 - np.array(mean)) / np.array(std), rtol=1e-6)


def test_prefetched_calls_hold_their_steps_in_order_padded_to_k():
  make = lambda steps: [{'s': np.array(s)} for s in steps]
  out = list(input_pipeline.prefetch_chunks(make, lambda b: b, [(3, 4), (7, 1), (8, 3)], 4))
  assert [list(c['s']) for c in out] == [[3, 4, 5, 6], [7, 7, 7, 7], [8, 9, 10, 10]]


def test_worker_processes_build_the_same_batches_as_the_stream():
  split = _split(100)
  options = augmentations.Options(policy='trivialaugment', cutmix_alpha=1.0)
  stream = input_pipeline.TrainStream(split, 16, seed=3, options=options)
  with batch_workers.BatchWorkers(stream, 2) as workers:
    got = list(workers.map(range(5, 11)))
  for step, batch in zip(range(5, 11), got):
    want = stream.batch(step)
    assert set(batch) == set(want)
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key])
