"""Serving side: numpy + onnxruntime (+ Pillow) only. Never imports torch or train/."""
