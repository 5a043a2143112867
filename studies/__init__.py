"""Studies: grids of training runs summarised into one table, JSON and plot each.

`driver.py` is the one driver (cells, resume, the summary rule, the writer, the plot);
`protocol.py`, `longtail.py` and `rkd.py` are thin definitions on it, run as
`python -m studies.protocol | longtail | rkd`. `detectors.py` holds the detector table and
the k-NN sweep summary that the protocol and the long-tail study share. This package sits
above train/ and export/ and may import both; neither imports it.
"""
