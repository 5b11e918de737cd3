"""Data: VWW-layout folders, the synthetic default, tf.data pipelines."""
from tinyq.data.folder import LABELS, ImageSet, layout, load_folder, load_splits
from tinyq.data.synthetic import synthetic, synthetic_splits

__all__ = ["LABELS", "ImageSet", "layout", "load_folder", "load_splits", "synthetic", "synthetic_splits"]
