"""The protocol core: one run of one method on one track, identical for every method.

- :mod:`harness.protocol.run`           ``evaluate(RunSpec)``: the stages in order, one result record
- :mod:`harness.protocol.grouping`      dependency groups (Torch-Pruning's DepGraph), MACs, applying a plan
- :mod:`harness.protocol.observations`  what methods may ask for (weights, gradients, activations...)
- :mod:`harness.protocol.pruning`       strategies (local, global, protected global) and the speedup search
- :mod:`harness.protocol.sparsify`      sparse training with a regularizer method
- :mod:`harness.protocol.train`         training and evaluation loops (pretrain, sparsify, retrain)
- :mod:`harness.protocol.distributed`   one run over N processes (torchrun): who does what, collectives
- :mod:`harness.protocol.checkpoints`   base checkpoints: a hashed file, or trained once and cached
- :mod:`harness.protocol.latency`       measured inference latency and throughput
"""
