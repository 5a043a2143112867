"""Run directory -> one self-describing, checked ONNX file (and, optionally, an int8 copy)."""
