"""The data stage: labelled image sets (shipped or the user's files) and open-set splits.

Shared by training, export's int8 check, the benchmark and the tests; imports nothing from
train/, export/ or handlers/.
"""
