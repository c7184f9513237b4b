"""Beyond the paper recipe: augmentations, mixed and smoothed labels, EMA,
flip test-time augmentation, the validation split and the cosine schedule."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import cifar
from resnet_jax.data import augmentations
from resnet_jax import benchmark
from resnet_jax.workdir import config_validation
from resnet_jax.data import datasets
from resnet_jax import errors
from resnet_jax.data import device_pipeline
from resnet_jax.data import input_pipeline
from resnet_jax import results
from resnet_jax.training import evaluation
from resnet_jax.training import inference
from resnet_jax.training import loop
from resnet_jax.training import run_setup
from resnet_jax.training import steps
from resnet_jax.training import train_state
from tests import draw_reference
from tests.conftest import tiny_config

SPLIT = benchmark.synthetic_split(96, 10, seed=3)
HEAVY = augmentations.Options('trivialaugment', 16, 1.0, 0.0)
CUTMIX = augmentations.Options('', 8, 0.0, 1.0)


# ----------------------------------------------------------------------------
# TrivialAugment operations and draws.
# ----------------------------------------------------------------------------

def test_trivialaugment_operations_do_what_they_say():
  image = SPLIT.images[0]
  for op in ('identity', 'shear_x', 'shear_y', 'translate_x', 'translate_y', 'rotate',
             'brightness', 'color', 'contrast', 'sharpness', 'posterize'):
    # Magnitude 0 is the identity for every operation but the two below.
    np.testing.assert_array_equal(augmentations.apply_op(image, op, 0.0), image, op)
  shifted = augmentations.apply_op(image, 'translate_x', 5.0)
  np.testing.assert_array_equal(shifted[:, :-5], image[:, 5:])
  assert (shifted[:, -5:] == augmentations.FILL).all()
  down = augmentations.apply_op(image, 'translate_y', -3.0)
  np.testing.assert_array_equal(down[3:], image[:-3])
  assert (augmentations.apply_op(image, 'posterize', 6.0) % 64 == 0).all()  # 2 bits.
  solarized = augmentations.apply_op(image, 'solarize', 128.0)  # Threshold 128.
  np.testing.assert_array_equal(solarized, np.where(image >= 128, 255 - image, image))
  stretched = augmentations.apply_op((image // 4 + 64).astype(np.uint8), 'autocontrast', 0)
  assert stretched.min() == 0 and stretched.max() == 255
  # equalize spreads a narrow histogram over the whole range, keeping order.
  narrow = (image // 8 + 100).astype(np.uint8)  # Values 100..131.
  flat = augmentations.apply_op(narrow, 'equalize', 0)
  assert flat.min() < 20 and flat.max() == 255
  for c in range(3):
    order = np.argsort(narrow[..., c], axis=None, kind='stable')
    assert (np.diff(flat[..., c].ravel()[order].astype(int)) >= 0).all()
  with pytest.raises(ValueError, match='unknown operation'):
    augmentations.apply_op(image, 'invert', 0.0)


def _row_shift(got, want):
  """The k with got[i] == want[i + k] where both exist, or None."""
  n = len(want)
  for k in range(-n // 2, n // 2 + 1):
    if np.array_equal(got[max(0, -k):n - max(0, k)], want[max(0, k):n + min(0, k)]):
      return k
  return None


def test_trivialaugment_operations_act_at_their_magnitude():
  image = SPLIT.images[0]
  # Shears move each row (column) sideways by magnitude x its distance from
  # the top (left) edge, to within the nearest pixel.
  for op, transpose in (('shear_x', False), ('shear_y', True)):
    out = augmentations.apply_op(image, op, 0.5)
    a, b = (out, image) if not transpose else (out.swapaxes(0, 1), image.swapaxes(0, 1))
    shifts = [_row_shift(a[y], b[y]) for y in range(32)]
    assert shifts[0] == 0 and shifts[31] >= 15, (op, shifts)
    assert all(s is not None and abs(s - 0.5 * y) <= 1 for y, s in enumerate(shifts)), op
  # Rotation is counter-clockwise in degrees, about the centre.
  np.testing.assert_array_equal(augmentations.apply_op(image, 'rotate', 90.0),
                                np.rot90(image))
  np.testing.assert_array_equal(augmentations.apply_op(image, 'rotate', -90.0),
                                np.rot90(image, -1))
  turned = augmentations.apply_op(image, 'rotate', 45.0)
  assert (turned[0, 0] == augmentations.FILL).all() and (turned[16, 16] == image[16, 16]).all()
  # Enhancements scale by 1 + magnitude: -0.5 brightness halves every value,
  # -0.99 colour is almost grey, -0.99 contrast almost flat.
  half = augmentations.apply_op(image, 'brightness', -0.5).astype(int)
  assert np.abs(half - image * 0.5).max() <= 1
  grey = augmentations.apply_op(image, 'color', -0.99).astype(int)
  assert np.ptp(grey, axis=2).max() <= 4 < np.ptp(image.astype(int), axis=2).mean()
  assert augmentations.apply_op(image, 'contrast', -0.99).std() < image.std() / 20
  # Sharpness: negative blurs (fewer edges), positive sharpens (more).
  edges = lambda x: (np.abs(np.diff(x.astype(int), axis=0)).sum()
                     + np.abs(np.diff(x.astype(int), axis=1)).sum())
  assert (edges(augmentations.apply_op(image, 'sharpness', -0.99)) < edges(image) / 2
          < edges(image) * 1.2 < edges(augmentations.apply_op(image, 'sharpness', 0.99)))
  # A batch applies each image's own operation and magnitude.
  ops = np.array([augmentations.OP_NAMES.index(n) for n in ('rotate', 'brightness')])
  batch = augmentations.apply_trivialaugment(SPLIT.images[:2], ops, np.array([90.0, -0.5]))
  np.testing.assert_array_equal(batch[0], np.rot90(SPLIT.images[0]))
  np.testing.assert_array_equal(batch[1], augmentations.apply_op(SPLIT.images[1],
                                                                  'brightness', -0.5))


def test_trivialaugment_draws_cover_every_operation_within_its_range():
  ops, magnitudes = augmentations.trivialaugment_draws(np.random.default_rng(0), 20000)
  assert set(ops) == set(range(len(augmentations.OP_NAMES)))
  tops = {name: top for name, top, _ in augmentations._OPS}
  for i, name in enumerate(augmentations.OP_NAMES):
    m = magnitudes[ops == i]
    assert np.abs(m).max() <= tops[name] + 1e-9
    # Signed operations go both ways; the 31 bins reach the top magnitude.
    if tops[name]:
      assert np.isclose(np.abs(m).max(), tops[name])
      assert (m < 0).any() == (name not in ('posterize', 'solarize'))


# ----------------------------------------------------------------------------
# Cutout, mixup, CutMix in the stream.
# ----------------------------------------------------------------------------

def test_cutout_squares_are_clipped_at_the_border():
  mask = augmentations.cutout_mask(np.array([16, 0, 31]), np.array([16, 0, 20]), 8, 32)
  assert mask[0].sum() == 64 and mask[0, 12:20, 12:20].all()
  assert mask[1].sum() == 16 and mask[1, :4, :4].all()  # Corner: a quarter left.
  assert mask[2].sum() == 5 * 8 and mask[2, 27:, 16:24].all()  # Rows 27..31.
  assert augmentations.cutout_mask(np.array([16]), np.array([16]), 32, 32).all()


@pytest.mark.parametrize('options', [HEAVY, CUTMIX])
def test_augmented_batches_are_a_pure_function_of_the_step(options):
  a = input_pipeline.TrainStream(SPLIT, 32, seed=5, options=options)
  b = input_pipeline.TrainStream(SPLIT, 32, seed=5, options=options)
  later = a.batch(7)
  for step in (7, 2, 7):
    first, again = b.batch(step), a.batch(step)
    assert first.keys() == again.keys()
    for k in first:
      np.testing.assert_array_equal(first[k], again[k])
  for k in later:
    np.testing.assert_array_equal(later[k], b.batch(7)[k])
  # Two processes materialise the rows of the same global batch, partners
  # included (those can live in the other process's half).
  halves = [input_pipeline.TrainStream(SPLIT, 32, 5, True, i, 2, options).batch(7)
            for i in range(2)]
  for k in later:
    np.testing.assert_array_equal(np.concatenate([h[k] for h in halves]), later[k])
  other_seed = input_pipeline.TrainStream(SPLIT, 32, seed=6, options=options).batch(7)
  assert not np.array_equal(other_seed['image'], later['image'])


def test_options_leave_the_crops_and_labels_of_the_paper_recipe_alone():
  plain = input_pipeline.TrainStream(SPLIT, 32, seed=1).batch(4)
  cut = input_pipeline.TrainStream(
      SPLIT, 32, seed=1, options=augmentations.Options(cutout_size=8)).batch(4)
  np.testing.assert_array_equal(plain['image'], cut['image'])
  np.testing.assert_array_equal(plain['label'], cut['label'])
  assert cut['erase'].shape == (32, 32, 32) and (cut['erase'].sum((1, 2)) <= 64).all()


def test_mixup_pairs_each_example_with_another_of_the_batch():
  options = augmentations.Options(mixup_alpha=1.0)
  b = input_pipeline.TrainStream(SPLIT, 32, seed=2, options=options).batch(3)
  # Each partner image (with its own crop and flip) is a row of the batch,
  # and carries that row's label.
  rows = [int(np.flatnonzero((b['image'] == m).all((1, 2, 3)))[0]) for m in b['mix_image']]
  assert sorted(rows) == list(range(32))
  np.testing.assert_array_equal(b['mix_label'], b['label'][rows])
  lam = b['mix_lam']
  assert (lam == lam[0]).all() and 0 <= lam[0] <= 1  # One weight per batch.
  lams = [input_pipeline.TrainStream(SPLIT, 32, 2, options=options).batch(s)['mix_lam'][0]
          for s in range(200)]
  assert abs(np.mean(lams) - 0.5) < 0.06 and np.std(lams) > 0.2  # Beta(1, 1).


def test_cutmix_pastes_the_partner_box_and_weights_labels_by_area():
  options = augmentations.Options(cutmix_alpha=1.0)
  stream = input_pipeline.TrainStream(SPLIT, 32, seed=4, options=options)
  plain = input_pipeline.TrainStream(SPLIT, 32, seed=4).batch(6)
  b = stream.batch(6)
  mix = augmentations.mix_draws(np.random.default_rng([4, 1, 6, 3]), 32, 'cutmix', 1.0, 32)
  y0, y1, x0, x1 = mix.box
  inside = np.zeros((32, 32), bool)
  inside[y0:y1, x0:x1] = True
  assert 0 < inside.sum() < 32 * 32
  np.testing.assert_array_equal(b['image'][:, ~inside], plain['image'][:, ~inside])
  np.testing.assert_array_equal(b['image'][:, inside],
                                plain['image'][mix.partner][:, inside])
  np.testing.assert_allclose(b['mix_lam'], 1 - inside.sum() / 1024, rtol=1e-6)
  np.testing.assert_array_equal(b['mix_label'], plain['label'][mix.partner])


# Labels name the example, so a partner is known by its label.
UNIQUE = input_pipeline.Split(images=SPLIT.images[:64], labels=np.arange(64, dtype=np.int32),
                              class_names=tuple(map(str, range(64))))


@pytest.mark.parametrize('kind', ['mixup', 'cutmix'])
def test_mixing_pairs_uniformly_and_draws_its_weight_from_the_configured_alpha(kind):
  weights = {}
  for alpha in draw_reference.ALPHAS:
    options = augmentations.Options.from_config(
        ml_collections.ConfigDict({f'{kind}_alpha': alpha}))
    stream = input_pipeline.TrainStream(UNIQUE, 8, seed=0, options=options)
    batches = [stream.batch(step) for step in range(400)]
    # A uniform permutation of 8 has one fixed point on average (an example
    # "mixed" with itself); an identity pairing would have 8, a shift 0.
    for b in batches:
      assert sorted(b['mix_label']) == sorted(b['label'])
    fixed = np.mean([np.sum(b['mix_label'] == b['label']) for b in batches])
    assert 0.8 < fixed < 1.2, fixed
    weights[alpha] = np.array([b['mix_lam'][0] for b in batches])
  draw_reference.assert_weights_follow_alpha(kind, weights)


def test_cutout_centres_are_uniform_over_the_image():
  cy, cx = augmentations.cutout_draws(np.random.default_rng(0), 4000, 32)
  mask = augmentations.cutout_mask(cy, cx, 8, 32)
  want = draw_reference.cutout_row_coverage(8)
  np.testing.assert_allclose(mask.any(2).mean(0), want, atol=0.03)  # Rows.
  np.testing.assert_allclose(mask.any(1).mean(0), want, atol=0.03)  # Columns.


# ----------------------------------------------------------------------------
# The train step: images, loss and accuracy with mixed and smoothed labels.
# ----------------------------------------------------------------------------

def test_mixup_and_cutout_reach_the_normalised_images():
  rng = np.random.default_rng(0)
  a, b = (rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for _ in range(2))
  erase = np.zeros((4, 32, 32), bool)
  erase[:, 3:9, 5:11] = True
  lam = np.array([0.25] * 4, np.float32)
  mean_std = datasets.MEAN_STD['cifar10']
  images = steps.train_images({'image': a, 'mix_image': b, 'mix_lam': lam,
                               'erase': erase}, mean_std, jnp.float32)
  norm = lambda x: np.asarray(device_pipeline.normalize(x, mean_std))
  expected = np.where(erase[..., None], 0.0, 0.25 * norm(a) + 0.75 * norm(b))
  np.testing.assert_allclose(images, expected, rtol=1e-6, atol=1e-6)
  assert (np.asarray(images)[erase] == 0).all()


@pytest.mark.slow
def test_loss_and_accuracy_mix_and_smooth_the_labels():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 10)).astype(np.float32)
  label, other = np.array([0, 1, 2, 3, 4, 5]), np.array([5, 4, 3, 2, 1, 0])
  lam = np.full(6, 0.3, np.float32)
  logp = np.asarray(jax.nn.log_softmax(logits))
  ce = lambda y: -logp[np.arange(6), y]
  batch = {'label': label, 'mix_label': other, 'mix_lam': lam}
  np.testing.assert_allclose(steps._loss(logits, batch, 0.0),
                             np.mean(0.3 * ce(label) + 0.7 * ce(other)), rtol=1e-6)
  # Smoothing 0.1 over 10 classes: 0.91 on the label, 0.01 elsewhere.
  smooth = -(0.9 * logp[np.arange(6), label] + 0.01 * logp.sum(1))
  np.testing.assert_allclose(steps._loss(logits, {'label': label}, 0.1), smooth.mean(),
                             rtol=1e-6)
  plain = -logp[np.arange(6), label].mean()
  np.testing.assert_allclose(steps._loss(logits, {'label': label}, 0.0), plain, rtol=1e-6)
  pred = logp.argmax(1)
  expected = np.mean(0.3 * (pred == label) + 0.7 * (pred == other))
  np.testing.assert_allclose(steps._accuracy(logits, batch), expected, rtol=1e-6)


@pytest.mark.slow
def test_ema_follows_the_parameters_with_a_warming_decay(tiny_data, tmp_path):
  config = tiny_config(tiny_data['data_dir'], ema_decay=0.9, num_devices=1)
  run = run_setup.Run(config, str(tmp_path / 'w'), need_train=True)
  state = run.dp.place_state(run.init_state())
  stream = input_pipeline.TrainStream(run.train, 16, 0)
  # Copies to the host: the step donates (frees) the state it is given.
  params, stats = [jax.device_get(state.params)], [jax.device_get(state.batch_stats)]
  for step in range(4):
    state, _ = run.p_train_step(state, run.dp.put_batch(stream.batch(step)))
    params.append(jax.device_get(state.params))
    stats.append(jax.device_get(state.batch_stats))
  expected = {'params': params[0], 'batch_stats': stats[0]}
  for t in range(1, 5):
    d = min(0.9, (1 + t) / (10 + t))  # 0.18, 0.25, 0.31, 0.36: the warm-up.
    expected = jax.tree.map(lambda e, x: d * e + (1 - d) * x, expected,
                            {'params': params[t], 'batch_stats': stats[t]})
  got = jax.device_get(state.ema)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7),
               got, expected)
  # The average differs from the raw weights it follows.
  assert not np.allclose(got['params']['fc']['kernel'], params[-1]['fc']['kernel'])


# ----------------------------------------------------------------------------
# Schedule, validation split, config checks.
# ----------------------------------------------------------------------------

def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
  config = ml_collections.ConfigDict(dict(
      lr_schedule='cosine', learning_rate=0.1, warmup_steps=10, warmup_lr=0.0,
      lr_boundaries=(0.5,), lr_decay_factor=0.1))
  fn = train_state.create_learning_rate_fn(config, 110)
  lr = lambda s: float(fn(s))
  assert lr(0) == 0.0 and lr(5) == pytest.approx(0.05, rel=1e-6)
  assert lr(10) == pytest.approx(0.1, rel=1e-6)
  assert lr(60) == pytest.approx(0.05, rel=1e-5)  # Half-way through the decay.
  assert lr(35) == pytest.approx(0.05 * (1 + np.cos(np.pi / 4)), rel=1e-5)
  assert lr(110) == pytest.approx(0.0, abs=1e-9)
  config.warmup_steps = 0
  assert float(train_state.create_learning_rate_fn(config, 110)(0)) == pytest.approx(0.1)


def test_validation_split_is_fixed_by_the_seed_and_disjoint():
  kept, held = datasets.hold_out(SPLIT, 20, seed=0)
  assert (len(kept), len(held)) == (76, 20)
  rows = lambda s: {bytes(im) for im in s.images}
  assert rows(kept) | rows(held) == rows(SPLIT) and not rows(kept) & rows(held)
  again = datasets.hold_out(SPLIT, 20, seed=0)[1]
  np.testing.assert_array_equal(again.images, held.images)
  assert rows(datasets.hold_out(SPLIT, 20, seed=1)[1]) != rows(held)
  with pytest.raises(errors.UserError, match='leaves no training images'):
    datasets.hold_out(SPLIT, 96, seed=0)


@pytest.mark.parametrize('field,value,message', [
    ('label_smoothing', -0.1, 'label_smoothing must be in [0, 1)'),
    ('cutout_size', 40, 'cutout_size must be an integer from 0 (off) to the image size 32'),
    ('ema_decay', 1.0, 'ema_decay must be in (0, 1)'),
    ('ema_decay', -0.5, 'ema_decay must be in (0, 1)'),
    ('mixup_alpha', -1.0, 'mixup_alpha must be 0 (off) or positive'),
    ('augment_policy', 'randaugment', "augment_policy must be '' (none) or 'trivialaugment'"),
    ('lr_schedule', 'linear', "lr_schedule must be 'piecewise', 'cosine' or 'triangular'"),
    ('lr_peak_epoch', -1.0, 'lr_peak_epoch must be 0 or a positive number of epochs'),
    ('weight_decay_on', 'bn', "weight_decay_on must be 'kernels', 'all' or 'ffcv'"),
    ('validation_size', -5, 'validation_size must be a whole number'),
])
def test_bad_values_are_refused_naming_the_field(tiny_data, field, value, message):
  config = tiny_config(tiny_data['data_dir'], **{field: value})
  with pytest.raises(errors.UserError) as e:
    config_validation.validate(config)
  assert message in str(e.value) and f'--config.{field}' in str(e.value)


@pytest.mark.parametrize('fields,message', [
    (dict(warmup_epochs=2.0), "warmup_epochs 2.0 sets a warm-up, which lr_schedule "
                              "'triangular' does not have"),
    (dict(warmup_steps=10), 'set --config.warmup_steps=0'),
    (dict(num_train_steps=-1, num_epochs=2.0),
     'lr_peak_epoch 2.0 is not before the end of the run'),
])
def test_a_triangular_schedule_has_its_peak_inside_the_run_and_no_warmup(
    tiny_data, fields, message):
  config = tiny_config(tiny_data['data_dir'], lr_schedule='triangular', **fields)
  with pytest.raises(errors.UserError) as e:
    config_validation.validate(config)
  assert message in str(e.value)


def test_a_triangular_peak_past_a_run_given_in_steps_is_refused_once_epochs_are_known(
    tiny_data):
  config = tiny_config(tiny_data['data_dir'], lr_schedule='triangular')
  run_setup.check_warmup(config, 101, 50.0)
  with pytest.raises(errors.UserError, match=r'lr_peak_epoch 2.0 \(100 steps\) is not'):
    run_setup.check_warmup(config, 100, 50.0)


def test_mixup_and_cutmix_together_are_refused(tiny_data):
  config = tiny_config(tiny_data['data_dir'], mixup_alpha=1.0, cutmix_alpha=1.0)
  with pytest.raises(errors.UserError, match='both on.*set one of them to 0'):
    config_validation.validate(config)


def test_presets_carry_the_papers_recipes():
  c = cifar.get_config('resnet18_cutout')
  assert (c.model, c.cutout_size, c.num_epochs, c.weight_decay, c.nesterov) == (
      'resnet18', 16, 200.0, 5e-4, True)
  assert tuple(c.lr_boundaries) == (0.3, 0.6, 0.8) and c.lr_decay_factor == 0.2
  for name, model in (('preact_resnet18_mixup', 'preact_resnet18'),
                      ('wrn28_10_mixup', 'wrn28_10')):
    c = cifar.get_config(name)
    assert (c.model, c.mixup_alpha, c.num_epochs, c.weight_decay) == (
        model, 1.0, 200.0, 1e-4)
    assert tuple(c.lr_boundaries) == (0.5, 0.75) and c.lr_decay_factor == 0.1
  c = cifar.get_config('resnet20_modern')
  assert (c.lr_schedule, c.num_epochs, c.ema_decay, c.flip_tta) == ('cosine', 10.0,
                                                                   0.999, True)
  for name in ('resnet18_cutout', 'preact_resnet18_mixup', 'wrn28_10_mixup',
               'resnet20_modern'):
    config_validation.validate(cifar.get_config(name))
  # Off by default: the paper recipes stay exact.
  c = cifar.get_config()
  assert not (c.cutout_size or c.mixup_alpha or c.cutmix_alpha or c.label_smoothing
              or c.ema_decay or c.flip_tta or c.augment_policy or c.validation_size)
  assert c.lr_schedule == 'piecewise'


# ----------------------------------------------------------------------------
# A run with every option: validation during training, the test split once.
# ----------------------------------------------------------------------------

@pytest.fixture(scope='module')
def modern_run(tiny_data, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('modern') / 'w')
  config = tiny_config(tiny_data['data_dir'], num_train_steps=6, validation_size=16,
                       lr_schedule='cosine', warmup_steps=2, label_smoothing=0.1,
                       cutout_size=8, mixup_alpha=0.2, augment_policy='trivialaugment',
                       ema_decay=0.9, flip_tta=True, eval_every_epochs=1.0)
  loop.train_and_evaluate(config, workdir)
  return config, workdir


def _lines(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f]


@pytest.mark.slow
def test_training_evaluates_the_validation_split_only(modern_run):
  _, workdir = modern_run
  evals = [l for l in _lines(workdir) if 'val_accuracy' in l]
  assert [l['step'] for l in evals] == [3, 6]  # 48 training images: 3 steps/epoch.
  for l in evals:
    assert l['val_examples'] == 16
    for key in ('val_accuracy', 'flip_val_accuracy', 'ema_val_accuracy',
                'ema_flip_val_accuracy', 'ema_flip_val_loss'):
      assert 0 <= l[key] <= (1 if key.endswith('accuracy') else 100), key
    assert l['ema_val_loss'] != l['val_loss']
  assert not any(k.startswith(('eval_', 'ema_eval', 'flip_eval')) for l in _lines(workdir)
                 for k in l)


@pytest.mark.slow
def test_eval_reports_raw_ema_and_flip_views_of_the_test_split(modern_run, tiny_data):
  config, workdir = modern_run
  result = evaluation.evaluate_checkpoint(config, workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['split'] == 'test' and saved['weights'] == ['raw', 'ema']
  assert saved['flip_tta'] and saved['eval_examples'] == 20
  assert saved['ema_flip_eval_accuracy'] == result['ema_flip_eval_accuracy']
  # The flip view by hand: the mean of the two softmaxes of the raw weights.
  raw = inference.load_for_inference(workdir)
  assert raw.weights == 'raw'
  model, variables = raw.model, raw.variables
  images = device_pipeline.normalize(tiny_data['arrays']['test'][0], raw.mean_std)
  probs = (jax.nn.softmax(model.apply(variables, images, train=False))
           + jax.nn.softmax(model.apply(variables, images[:, :, ::-1], train=False))) / 2
  labels = tiny_data['arrays']['test'][1]
  assert saved['flip_eval_accuracy'] == np.mean(np.argmax(probs, -1) == labels)
  np.testing.assert_allclose(saved['flip_eval_loss'],
                             -np.mean(np.log(probs[np.arange(20), labels])), rtol=1e-5)
  # The EMA view evaluates the averaged weights.
  ema = inference.load_for_inference(workdir, prefer_ema=True)
  assert ema.weights == 'ema'
  logits = model.apply(ema.variables, images, train=False)
  assert saved['ema_eval_accuracy'] == np.mean(np.argmax(logits, -1) == labels)
  # The results table takes the one test look from eval.json.
  row = results.summarize(workdir, 'ema_flip_eval_accuracy')
  assert row['final_accuracy'] == saved['ema_flip_eval_accuracy']
  for part in ('cosine, warm-up 2 steps', 'trivialaugment', 'Cutout 8', 'mixup 0.2',
               'label smoothing 0.1', 'EMA 0.9', '16 held out'):
    assert part in row['recipe'], part


@pytest.mark.slow
def test_predict_uses_the_average_and_flip_when_asked(modern_run, tiny_data, tmp_path):
  from PIL import Image
  from resnet_jax import predict
  _, workdir = modern_run
  path = str(tmp_path / 'a.png')
  image = tiny_data['arrays']['test'][0][0]
  Image.fromarray(image).save(path)
  ema = inference.load_for_inference(workdir, prefer_ema=True)
  model, ema_vars = ema.model, ema.variables
  x = device_pipeline.normalize(image[None], ema.mean_std)
  expected = (jax.nn.softmax(model.apply(ema_vars, x, train=False))
              + jax.nn.softmax(model.apply(ema_vars, x[:, :, ::-1], train=False)))[0] / 2
  (result,) = predict.predict(workdir, [path], top_k=10, flip_tta=True)
  assert result['weights'] == 'ema' and result['flip_tta']
  got = {p['class']: p['probability'] for p in result['predictions']}
  np.testing.assert_allclose([got[n] for n in ema.names], expected, rtol=1e-5)
  (raw,) = predict.predict(workdir, [path], top_k=10, ema=False)
  assert raw['weights'] == 'raw' and raw['predictions'] != result['predictions']
