"""Running cells: the matrix, backbones, formulations, the trainer, one cell's stages, executors and locks."""
