"""A run: pipeline and sequential runs, devices, outputs, resume, the run folder, checkpoints, progress and
recovery. Imports backends/ and report/, never cli."""
