"""Training: the state, the steps and the loop of a run.

- `train_state`: model, learning-rate schedule, optimizer, train state, EMA.
- `steps`: the compiled train and eval steps.
- `run_setup`: what train and eval share (checked config, data, model, steps).
- `loop`: the training loop (resume, train, evaluate, checkpoint, stop).
- `evaluation`: a split's metrics; a checkpoint's eval.json.
- `init_from`, `convert`: starting from another run or torchvision weights.
- `inference`: loading a run's checkpoint for predict.

Imports: every lower layer (`errors`, `logs`, `models`, `data`,
`parallelism`, `reporting`, `workdir`) and this folder.
"""
