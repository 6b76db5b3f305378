"""The preprocessed image cache: its on-disk format and reader (``format``), building one (``build``), SLURM
shards and their merge (``shards``), and label counts of its index (``label_stats``)."""
