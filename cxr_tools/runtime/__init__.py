"""Runtime services shared by every engine: files, progress, devices, distributed, signals."""
