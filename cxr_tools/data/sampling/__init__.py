"""Drawing from a cache's index: class-balanced order (``balance``), few-shot episodes (``episodes``), Siamese
pairs (``pairs``), the label columns and rows a trainer uses (``selection``), the episode samplers of a meta-split
(``meta_samplers``) and the trainers' batch loader (``batches``)."""
