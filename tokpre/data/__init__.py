"""The data layer: The Well HDF5 I/O, embedded physics generators and the Grain pipeline."""
