"""Data: image pipeline, augmentation, datasets (LMDB, folders, trees), synthetic renderer."""
