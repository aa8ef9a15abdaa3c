"""The training job and the command-line tools' shared parts.

`trainer` (the loop behind train.py), `step` (TrainState and the jitted train step),
`checkpoints` (Orbax checkpoints and workdirs), `distributed` (multi-process start-up and
the train state's shardings), `writers` (TensorBoard, stdout, metrics.jsonl), `generation`
(images from a trained model), `evaluation` (metrics of a trained model) and `cli`.
Import the submodules directly.
"""
