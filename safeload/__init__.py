"""Reading files that may be hostile: one home for every loader that takes a file from outside.

- unpickle: the restricted unpickler (EDM pickles and torch archives, no code from the
  file runs, time and memory bounded by the file's content).
- networks: the network loader of every command (EDM pickles, weights-only files).
- weights: the toolkit's weights-only format (torch.save of plain data).
- checkpoints: guided-diffusion `.pt` state dicts (torch's weights_only reading).
- npz: .npz headers and arrays, sizes checked against the file before anything is read.

docs/safe-loading.md states the guarantees and the limits. The network classes a pickle may
name are in networks/ (unpickle.PERSISTENT_MODULES); they are imported only when rebuilt.
"""
