"""Autotuning with TVM MetaSchedule (issue 10, in progress): so far the tuning-record store, one database per
target key (records.py). The tuning job, the design spaces and applying records in optimize() come next."""
