"""PyTorch reference measurements (needs the optional ``torch``; nothing here is imported by
``simtrain`` at import time). By job:

* :mod:`~simtrain.torchref.measure`: ``simtrain measure``, one measured training step
  (``measure_step`` -> ``MeasuredStep``);
* :mod:`~simtrain.torchref.reference_model`: the reference decoder and its conventions, built from
  :mod:`~simtrain.torchref.layers` (dropout, norms, rotary), :mod:`~simtrain.torchref.peft`
  (LoRA, QLoRA NF4 emulation, adapters) and :mod:`~simtrain.torchref.losses` (fused
  cross-entropy);
* :mod:`~simtrain.torchref.precision`: the precision recipes; :mod:`~simtrain.torchref.trainer`:
  one training step under them;
* :mod:`~simtrain.torchref.instrument`: storage tracker and saved-tensor recorder;
* :mod:`~simtrain.torchref.opcount`: dispatched ATen ops per step;
* :mod:`~simtrain.torchref.tp_plans`: DTensor tensor-parallel plans (per block, per linear, the
  embedding vocab-parallel or whole) on a fake process group: the collectives and saved bytes;
* :mod:`~simtrain.torchref.calibrate`: ``simtrain calibrate``, with the timed measurements in
  :mod:`~simtrain.torchref.microbench` and the profile text in
  :mod:`~simtrain.torchref.profile_writer`.
"""
