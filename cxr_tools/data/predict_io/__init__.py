"""What ``cxr predict`` and ``cxr similarity`` read (input lists, support sets: ``inputs``) and write (the
resumable predictions CSV: ``predictions``)."""
