"""Datasets as numpy arrays of tokens + labels, with fixed seeded train / calib / test splits.

Letters: N examples, T tokens, P features per token.
"""

from __future__ import annotations

from routecal.data.splits import Dataset, Split

__all__ = ["Dataset", "Split", "load_dataset"]


def load_dataset(data_cfg) -> Dataset:
    """Builds the dataset named by `data_cfg.name`.

    Args:
      data_cfg: an `ml_collections.ConfigDict` (or dict). `name` selects the loader; its other keys
        are read with `.get`, so missing keys take the loader's documented defaults:
        "digits"        scikit-learn digits via a locally built TFDS dataset
                        (`embedded.load_digits`: seed, patch_size, data_dir);
        "synthetic"     the difficulty-knob sequence task (`synthetic.load_synthetic`: seed,
                        n_train, n_calib, n_test, seq_len, token_dim, num_classes, difficulty);
        "tfds:<name>"   e.g. tfds:mnist, tfds:fashion_mnist, tfds:cifar10 from a prepared data_dir
                        (`tfds.load_tfds`: seed, patch_size, data_dir, calib_fraction, max_examples).

    Returns:
      Dataset with train / calib / test splits of tokens [N, T, P] float32 and labels [N] int32.

    Raises:
      ValueError: unknown dataset name, or bad values (naming the key).
    """
    name = data_cfg.get("name", None)
    if not isinstance(name, str):
        raise ValueError(
            f"data.name: expected a string (digits, synthetic, tfds:<name>), got {name!r}"
        )
    if name == "digits":
        from routecal.data import embedded

        return embedded.load_digits(data_cfg)
    if name == "synthetic":
        from routecal.data import synthetic

        return synthetic.load_synthetic(data_cfg)
    if name.startswith("tfds:"):
        from routecal.data import tfds as tfds_loader

        return tfds_loader.load_tfds(data_cfg)
    raise ValueError(
        f"data.name: unknown dataset {name!r}; expected digits, synthetic or tfds:<name>"
    )
