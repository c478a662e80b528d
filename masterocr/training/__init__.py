"""The training system behind `masterocr train` (PyTorch Lightning).

runner.py: config defaults, devices, the Trainer and one run; module.py: the LightningModule around any
build_model result (losses, optimisation, validation, checkpoint extras); data.py: source mixing, samplers
that resume exactly, loaders; optim.py: optimiser, schedules, EMA; callbacks.py: atomic checkpoint files,
last/best checkpoints, throughput, progress bar.
"""
